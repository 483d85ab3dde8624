"""Eviction policies: the right victim in crafted scenarios, and pinned experts stay."""

from __future__ import annotations

import asyncio

import pytest

from coe_router.errors import UpstreamTimeout
from coe_router.experts.tiering.eviction import (
    EVICTION_POLICIES,
    EvictionPolicy,
    FIFOPolicy,
    LFUPolicy,
    LRUPolicy,
    ScorePolicy,
)
from coe_router.experts.tiering.scheduler import TierScheduler
from coe_router.experts.tiering.tiers import ExpertResidency, Tier
from tests.fake_sleep import FakeGPU
from tests.unit.tier_fakes import Clock, FakeDriver, build, settle, wait_for


def resident(name: str, *, sleep_level: int = 1, can_sleep: bool = True) -> ExpertResidency:
    gpu = FakeGPU({"gpu0": 100})
    driver = FakeDriver(name, gpu, "gpu0", 1, can_sleep=can_sleep)
    return ExpertResidency(name, 1, "gpu0", driver, sleep_level=sleep_level)


def victim(policy: EvictionPolicy, experts: list[ExpertResidency], now: float) -> str:
    return min(experts, key=lambda e: policy.keep_score(e, now)).name


def test_every_policy_is_registered() -> None:
    assert set(EVICTION_POLICIES) == {"fifo", "lru", "lfu", "score"}


# --- keep scores --------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used() -> None:
    a, b, c = resident("a"), resident("b"), resident("c")
    a.record_use(10.0)
    b.record_use(5.0)
    c.record_use(20.0)
    assert victim(LRUPolicy(), [a, b, c], 30.0) == "b"


def test_lru_evicts_a_never_used_expert_first() -> None:
    a, b = resident("a"), resident("b")
    a.record_use(10.0)
    assert victim(LRUPolicy(), [a, b], 30.0) == "b"


def test_lfu_evicts_the_least_frequently_used_then_the_least_recent() -> None:
    a, b, c = resident("a"), resident("b"), resident("c")
    for t in (1.0, 2.0, 3.0):
        a.record_use(t)
    b.record_use(50.0)  # recent, but once
    c.record_use(40.0)  # once, and less recent than b
    assert victim(LFUPolicy(), [a, b, c], 60.0) == "c"
    assert victim(LFUPolicy(), [a, b], 60.0) == "b"


def test_fifo_evicts_the_earliest_woken_whatever_its_use() -> None:
    a, b = resident("a"), resident("b")
    a.woke_at, b.woke_at = 1.0, 2.0
    a.record_use(99.0)
    assert victim(FIFOPolicy(), [a, b], 100.0) == "a"


def test_score_keeps_what_is_expensive_to_bring_back() -> None:
    cheap, dear = resident("cheap", sleep_level=1), resident("dear", sleep_level=2)
    cheap.wake_s[Tier.WARM] = 0.3
    dear.wake_s[Tier.COLD] = 20.0
    for e in (cheap, dear):
        e.record_use(10.0)
    assert victim(ScorePolicy(), [cheap, dear], 12.0) == "cheap"
    # LRU sees no difference; it breaks the tie by order.
    assert LRUPolicy().keep_score(cheap, 12.0) == LRUPolicy().keep_score(dear, 12.0)


def test_score_evicts_the_stale_one_at_equal_cost() -> None:
    stale, fresh = resident("stale"), resident("fresh")
    for t in range(10):
        stale.record_use(float(t))  # busy long ago
    fresh.record_use(295.0)
    assert victim(ScorePolicy(recency_tau_s=30.0), [stale, fresh], 300.0) == "stale"


def test_score_keeps_the_frequent_one_at_equal_recency_and_cost() -> None:
    often, once = resident("often"), resident("once")
    for t in (96.0, 97.0, 98.0, 99.0):
        often.record_use(t)
    once.record_use(99.0)
    assert victim(ScorePolicy(), [often, once], 100.0) == "once"


def test_score_counts_a_process_expert_as_falling_cold() -> None:
    proc = resident("proc", can_sleep=False)
    assert proc.evict_tier == Tier.COLD
    assert resident("vllm").evict_tier == Tier.WARM
    assert resident("l2", sleep_level=2).evict_tier == Tier.COLD


def test_the_decayed_rate_halves_every_half_life() -> None:
    e = resident("e")
    e.record_use(0.0)
    e.record_use(0.0)
    assert e.rate(60.0) == pytest.approx(1.0)
    assert e.uses == 2


# --- in the scheduler ---------------------------------------------------------------------


async def _third_wakes(policy: EvictionPolicy, uses: list[tuple[str, float]]) -> str:
    """ "a" and "b" hot (budget for two), ``uses`` replayed at their times, then "c" is
    requested: which one did the scheduler put to sleep?"""
    clock = Clock()
    sched, _, gpu = build({"a": 8, "b": 8, "c": 8}, 16, policy=policy, clock=clock)
    await sched.start()
    for name in ("a", "b"):
        clock.now += 1
        await sched.wake(name)
    for name, t in uses:
        clock.now = t
        async with sched.hold(name):
            pass
    clock.now += 1
    async with sched.hold("c"):
        pass
    await settle(sched)
    slept = [n for n in ("a", "b") if sched.experts[n].tier != Tier.HOT]
    assert len(slept) == 1, slept
    assert gpu.violations == []
    return slept[0]


async def test_scheduler_lru_victim() -> None:
    assert await _third_wakes(LRUPolicy(), [("a", 200.0), ("b", 210.0)]) == "a"
    assert await _third_wakes(LRUPolicy(), [("b", 200.0), ("a", 210.0)]) == "b"


async def test_scheduler_lfu_victim() -> None:
    uses = [("a", 200.0), ("a", 201.0), ("a", 202.0), ("b", 250.0)]
    assert await _third_wakes(LFUPolicy(), uses) == "b"


async def test_scheduler_fifo_victim() -> None:
    # "a" woke first: it goes, though it was used last.
    assert await _third_wakes(FIFOPolicy(), [("b", 200.0), ("a", 210.0)]) == "a"


async def test_scheduler_score_victim() -> None:
    uses = [("a", 200.0), ("a", 201.0), ("a", 202.0), ("b", 203.0)]
    assert await _third_wakes(ScorePolicy(), uses) == "b"


@pytest.mark.parametrize(
    ("unpin", "stays", "goes"), [(False, "a", "b"), (True, "b", "a")], ids=["pinned", "unpinned"]
)
async def test_a_pinned_expert_is_never_the_victim_until_unpinned(
    unpin: bool, stays: str, goes: str
) -> None:
    clock = Clock()
    sched, _, _ = build({"a": 8, "b": 8, "c": 8}, 16, pinned=["a"], clock=clock)
    await sched.start()
    for name in ("a", "b"):
        clock.now += 1
        await sched.wake(name)
    clock.now += 1
    async with sched.hold("b"):  # "a" is now the least recently used
        pass
    if unpin:  # evictable by policy again
        sched.pin("a", False)
    clock.now += 1
    async with sched.hold("c"):
        pass
    assert sched.experts[stays].tier == Tier.HOT
    assert sched.experts[goes].tier == Tier.WARM


async def test_under_pressure_requests_wait_rather_than_evict_a_pinned_expert() -> None:
    sched, drivers, gpu = build({"a": 8, "b": 8}, 10, hot=["a"], pinned=["a"],
                                queue_timeout_s=0.1)  # fmt: skip
    await sched.start()
    for mode in ("grouped", "fifo"):
        sched.mode = mode  # type: ignore[assignment]
        with pytest.raises(UpstreamTimeout):
            await sched.acquire("b")
    assert drivers["a"].sleeps == []
    assert sched.experts["a"].tier == Tier.HOT
    # Unpinned, it may go: a waiting request gets its memory.
    sched.queue_timeout_s = 5.0
    waiting = asyncio.create_task(sched.acquire("b"))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    sched.pin("a", False)
    await asyncio.wait_for(waiting, 1.0)
    sched.release("b")
    assert drivers["a"].sleeps == [1]
    assert gpu.violations == []


async def test_pinning_an_awake_expert_protects_it_from_then_on() -> None:
    sched, drivers, _ = build({"a": 8, "b": 8}, 10, hot=["a"], queue_timeout_s=0.05)
    await sched.start()
    sched.pin("a", True)
    with pytest.raises(UpstreamTimeout):
        await sched.acquire("b")
    assert drivers["a"].sleeps == []


async def test_an_expert_that_cannot_fit_beside_a_pinned_one_does_not_block_others() -> None:
    """ "x" cannot wake while "p" is pinned; "y" fits in the free memory and must not
    wait behind "x" (which has more waiting requests) until those time out."""
    sched, drivers, gpu = build({"p": 10, "x": 15, "y": 5}, 20, hot=["p"], pinned=["p"],
                                queue_timeout_s=2.0)  # fmt: skip
    await sched.start()
    xs = [asyncio.create_task(sched.acquire("x")) for _ in range(2)]
    await wait_for(lambda: len(sched.experts["x"].waiters) == 2)
    await asyncio.wait_for(sched.acquire("y"), 0.5)
    sched.release("y")
    for t in xs:
        t.cancel()
    await asyncio.gather(*xs, return_exceptions=True)
    assert drivers["x"].wakes == []
    assert gpu.violations == []


async def test_fifo_requests_for_a_pinned_expert_are_not_blocked_by_an_impossible_one() -> None:
    sched, _, _ = build({"p": 10, "x": 15}, 20, hot=["p"], pinned=["p"],
                        mode="fifo", queue_timeout_s=2.0)  # fmt: skip
    await sched.start()
    x = asyncio.create_task(sched.acquire("x"))
    await wait_for(lambda: len(sched.experts["x"].waiters) == 1)
    await asyncio.sleep(0.001)
    await asyncio.wait_for(sched.acquire("p"), 0.5)
    sched.release("p")
    x.cancel()
    await asyncio.gather(x, return_exceptions=True)


def test_policies_plug_into_the_scheduler_by_name() -> None:
    gpu = FakeGPU({"gpu0": 10})
    for name, cls in EVICTION_POLICIES.items():
        e = ExpertResidency("e", 1, "gpu0", FakeDriver("e", gpu, "gpu0", 1))
        sched = TierScheduler([e], {"gpu0": 10}, cls())
        assert isinstance(sched.policy, cls), name
