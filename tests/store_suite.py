"""One behaviour suite for every ``StateStore``: the in-process store and Redis.

Not a test module itself: ``tests/unit/test_state_store_memory.py`` runs it on
``MemoryStore``, ``tests/integration/test_state_store.py`` on a real redis-server. Each
subclass provides the ``store`` fixture, empty for every test.
"""

from __future__ import annotations

import asyncio

from coe_router.state import StateStore
from coe_router.state.base import WINDOW_S, admission

W = WINDOW_S


class StoreBehaviour:
    """What every store must do; a subclass supplies an empty ``store`` per test."""

    # --- key/value ---

    async def test_values_expire_after_their_ttl(self, store: StateStore) -> None:
        assert await store.get("k") is None
        await store.set("k", b"v1", ttl_s=0.2)
        await store.set("long", b"v2", ttl_s=30)
        assert await store.get("k") == b"v1"
        await asyncio.sleep(0.3)
        assert await store.get("k") is None
        assert await store.get("long") == b"v2"

    async def test_set_overwrites(self, store: StateStore) -> None:
        await store.set("k", b"a", ttl_s=10)
        await store.set("k", b"\x00binary\xff", ttl_s=10)
        assert await store.get("k") == b"\x00binary\xff"

    # --- rate limits ---

    async def test_requests_are_admitted_up_to_the_limit(self, store: StateStore) -> None:
        now = 1000 * W + 1  # just after a window boundary
        verdicts = [(await store.hit("key", now, 3, None)).allowed for _ in range(5)]
        assert verdicts == [True, True, True, False, False]
        other = await store.hit("other-key", now, 3, None)
        assert other.allowed  # keys are counted apart

    async def test_the_window_slides(self, store: StateStore) -> None:
        start = 1000 * W + W / 2  # mid-window: 3 requests
        for _ in range(3):
            assert (await store.hit("key", start, 3, None)).allowed
        assert not (await store.hit("key", start, 3, None)).allowed
        # Early in the next window the previous one still weighs almost fully...
        early = 1001 * W + 1
        counts = await store.hit("key", early, 3, None)
        assert not counts.allowed
        assert (counts.prev_requests, counts.cur_requests) == (3, 0)
        # ...and once a third of it has slid out, one more request fits (3 * 2/3 + 1 <= 3).
        later = 1001 * W + W / 3 + 0.01
        assert (await store.hit("key", later, 3, None)).allowed
        assert not (await store.hit("key", later, 3, None)).allowed
        # Two windows on, nothing of the old counts remains.
        assert (await store.hit("key", 1003 * W + 1, 3, None)).cur_requests == 1

    async def test_tokens_refuse_once_the_window_is_at_the_limit(self, store: StateStore) -> None:
        now = 1000 * W + 1
        assert (await store.hit("key", now, None, 100)).allowed
        await store.add_tokens("key", now, 60)
        assert (await store.hit("key", now, None, 100)).allowed
        await store.add_tokens("key", now, 60)
        counts = await store.hit("key", now, None, 100)
        assert not counts.allowed
        assert counts.cur_tokens == 120
        verdict = admission(counts, 1, None, 100)
        assert verdict.limit == "tokens"
        assert verdict.tokens_remaining == 0
        assert verdict.retry_after_s > W - 1  # the current window must end first

    async def test_concurrent_hits_never_exceed_the_limit(self, store: StateStore) -> None:
        now = 1000 * W + 1
        results = await asyncio.gather(*[store.hit("key", now, 10, None) for _ in range(60)])
        assert sum(r.allowed for r in results) == 10

    # --- leases and fencing ---

    async def test_a_lease_has_one_holder_and_tokens_grow(self, store: StateStore) -> None:
        first = await store.acquire("gpu0", "gw-a", ttl_s=10)
        assert first is not None
        assert await store.acquire("gpu0", "gw-b", ttl_s=10) is None
        assert await store.acquire("gpu0", "gw-a", ttl_s=10) == first  # re-entrant
        assert not await store.release("gpu0", "gw-b", first)
        assert await store.release("gpu0", "gw-a", first)
        second = await store.acquire("gpu0", "gw-b", ttl_s=10)
        assert second is not None
        assert second > first
        other = await store.acquire("gpu1", "gw-a", ttl_s=10)  # names are independent
        assert other is not None

    async def test_an_expired_holder_is_fenced_off(self, store: StateStore) -> None:
        old = await store.acquire("tier:code", "gw-a", ttl_s=0.2)
        assert old is not None
        assert await store.fenced_set("tier:code", "gw-a", old, "tiers", "code", b"hot")
        assert await store.renew("tier:code", "gw-a", old, ttl_s=0.2)
        await asyncio.sleep(0.35)  # gw-a stalls past its TTL
        new = await store.acquire("tier:code", "gw-b", ttl_s=10)
        assert new is not None
        assert new > old
        # The stalled holder wakes up: every write and renewal under its old token is refused.
        assert not await store.fenced_set("tier:code", "gw-a", old, "tiers", "code", b"warm")
        assert not await store.renew("tier:code", "gw-a", old, ttl_s=10)
        assert not await store.release("tier:code", "gw-a", old)
        assert await store.fenced_set("tier:code", "gw-b", new, "tiers", "code", b"cold")
        assert await store.table("tiers") == {"code": b"cold"}

    async def test_a_released_lease_writes_nothing(self, store: StateStore) -> None:
        token = await store.acquire("x", "gw-a", ttl_s=10)
        assert token is not None
        assert await store.release("x", "gw-a", token)
        assert not await store.fenced_set("x", "gw-a", token, "t", "f", b"v")
        assert await store.table("t") == {}

    async def test_concurrent_acquires_have_one_winner(self, store: StateStore) -> None:
        tokens = await asyncio.gather(
            *[store.acquire("one", f"gw-{i}", ttl_s=10) for i in range(20)]
        )
        assert sum(t is not None for t in tokens) == 1

    # --- capped log ---

    async def test_the_log_reads_in_order_after_an_id(self, store: StateStore) -> None:
        ids = [
            await store.append("log", {"n": str(i), "text": "é"}, max_entries=100) for i in range(5)
        ]
        entries = await store.read("log")
        assert [e[1]["n"] for e in entries] == ["0", "1", "2", "3", "4"]
        assert entries[0][1]["text"] == "é"
        after = await store.read("log", after=ids[2], count=1)
        assert [e[1]["n"] for e in after] == ["3"]
        assert await store.read("missing-log") == []

    async def test_the_log_is_capped(self, store: StateStore) -> None:
        for i in range(1000):
            await store.append("log", {"n": str(i)}, max_entries=50)
        entries = await store.read("log", count=10_000)
        # Redis trims whole nodes (MAXLEN ~): a little more than the cap may remain.
        assert 50 <= len(entries) <= 50 + 200
        assert entries[-1][1]["n"] == "999"

    # --- cancellation ---

    async def test_a_cancelled_call_ends_its_task(self, store: StateStore) -> None:
        """A cancel that lands at any step of a call ends the task calling it.

        The gateway stops its loops (the tier sync, lease renewals) by cancelling them: a
        store that swallowed a cancel would leave such a loop running for ever, and the
        shutdown waiting on it. Python 3.11's ``asyncio.wait_for``, which redis-py uses
        around socket writes, swallows a cancel that lands just as its inner step finishes.
        """

        async def poll() -> None:
            while True:
                await store.table("tiers")
                await asyncio.sleep(0)  # the in-process store never yields by itself

        for trial in range(300):
            task = asyncio.create_task(poll())
            for _ in range(trial % 12):  # cancel at a different step of a call each time
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            if task not in done:
                while not task.done():  # stop it for the next test, however many it takes
                    task.cancel()
                    await asyncio.wait([task], timeout=0.1)
                raise AssertionError(f"trial {trial}: the cancel was swallowed; the loop ran on")
            assert task.cancelled()
