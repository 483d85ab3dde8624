"""The tier scheduler on fake drivers: single flight, budget, grouped vs fifo, failures."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coe_router.errors import UpstreamTimeout, UpstreamUnavailable
from coe_router.experts.tiering.eviction import EVICTION_POLICIES, LRUPolicy
from coe_router.experts.tiering.scheduler import TierScheduler
from coe_router.experts.tiering.tiers import ExpertResidency, Tier
from tests.fake_sleep import FakeGPU
from tests.unit.tier_fakes import Clock, FakeDriver, build, settle, wait_for

# --- single flight ------------------------------------------------------------------------


async def test_concurrent_requests_for_a_cold_expert_share_one_wake_in_arrival_order() -> None:
    sched, drivers, _ = build({"a": 4}, 10, driver_kw={"wake_s": 0.02})
    await sched.start()
    served: list[int] = []

    async def request(i: int) -> None:
        await sched.acquire("a")
        served.append(i)

    tasks = [asyncio.create_task(request(i)) for i in range(12)]
    await asyncio.gather(*tasks)
    assert drivers["a"].wakes == [Tier.COLD]
    assert served == list(range(12))
    e = sched.experts["a"]
    assert (e.tier, e.in_flight, len(e.waiters), e.wakes) == (Tier.HOT, 12, 0, 1)
    for _ in range(12):
        sched.release("a")
    assert e.in_flight == 0


async def test_a_request_for_a_hot_expert_goes_straight_in() -> None:
    sched, drivers, _ = build({"a": 4}, 10, hot=["a"])
    await sched.start()
    await sched.acquire("a")
    assert drivers["a"].wakes == []
    assert sched.experts["a"].in_flight == 1
    sched.release("a")


async def test_hold_releases_on_error() -> None:
    sched, _, _ = build({"a": 4}, 10, hot=["a"])
    await sched.start()
    seen: list[int] = []

    async def fails() -> None:
        async with sched.hold("a"):
            seen.append(sched.experts["a"].in_flight)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fails()
    assert seen == [1]
    assert sched.experts["a"].in_flight == 0


# --- the budget ---------------------------------------------------------------------------


def test_an_expert_larger_than_its_budget_is_a_config_error() -> None:
    gpu = FakeGPU({"gpu0": 10})
    big = ExpertResidency("big", 12, "gpu0", FakeDriver("big", gpu, "gpu0", 12))
    with pytest.raises(ValueError, match="big"):
        TierScheduler([big], {"gpu0": 10}, LRUPolicy())


def test_an_expert_on_a_device_without_budget_is_a_config_error() -> None:
    gpu = FakeGPU({"gpu1": 10})
    e = ExpertResidency("e", 1, "gpu1", FakeDriver("e", gpu, "gpu1", 1))
    with pytest.raises(ValueError, match="no budget"):
        TierScheduler([e], {"gpu0": 10}, LRUPolicy())


async def test_start_puts_experts_over_the_budget_to_sleep_pinned_kept() -> None:
    sched, _, gpu = build({"a": 6, "b": 6, "c": 6}, 12, hot=["a", "b", "c"], pinned=["c"])
    await sched.start()
    await settle(sched)
    tiers = {n: e.tier for n, e in sched.experts.items()}
    assert tiers == {"a": Tier.HOT, "b": Tier.WARM, "c": Tier.HOT}
    assert sched.used_gb("gpu0") == 12
    assert gpu.used_gb["gpu0"] == 12


_POLICIES = sorted(EVICTION_POLICIES)


@st.composite
def _workloads(draw: st.DrawFn) -> dict[str, object]:
    budget = draw(st.integers(4, 16))
    n = draw(st.integers(2, 5))
    sizes = {f"e{i}": float(draw(st.integers(1, budget))) for i in range(n)}
    hot: list[str] = []
    used = 0.0
    for name, gb in sizes.items():
        if draw(st.booleans()) and used + gb <= budget:
            hot.append(name)
            used += gb
    pinned = draw(st.sets(st.sampled_from(hot), max_size=1)) if hot else set()
    requests = draw(
        st.lists(
            st.tuples(
                st.sampled_from(sorted(sizes)),
                st.integers(0, 4),  # arrival (ms)
                st.integers(0, 3),  # time held (ms)
                st.sampled_from(["ok", "ok", "ok", "cancel"]),
            ),
            min_size=1,
            max_size=14,
        )
    )
    return {
        "budget": float(budget),
        "sizes": sizes,
        "hot": hot,
        "pinned": pinned,
        "requests": requests,
        "mode": draw(st.sampled_from(["grouped", "fifo"])),
        "policy": draw(st.sampled_from(_POLICIES)),
        "levels": {n: draw(st.sampled_from([1, 2])) for n in sizes},
        "wake_ms": {n: draw(st.integers(0, 3)) for n in sizes},
        "sleep_ms": {n: draw(st.integers(0, 3)) for n in sizes},
        "failing": draw(st.sets(st.sampled_from(sorted(sizes)), max_size=2)),
        "hanging": draw(st.sets(st.sampled_from(sorted(sizes)), max_size=2)),
        "max_wait_s": draw(st.sampled_from([0.001, 0.005, 10.0])),
    }


async def _run_workload(w: dict[str, object]) -> None:
    budget: float = w["budget"]  # type: ignore[assignment]
    sizes: dict[str, float] = w["sizes"]  # type: ignore[assignment]
    levels: dict[str, int] = w["levels"]  # type: ignore[assignment]
    wake_ms: dict[str, int] = w["wake_ms"]  # type: ignore[assignment]
    sleep_ms: dict[str, int] = w["sleep_ms"]  # type: ignore[assignment]
    failing: set[str] = w["failing"]  # type: ignore[assignment]
    requests: list[tuple[str, int, int, str]] = w["requests"]  # type: ignore[assignment]
    gpu = FakeGPU({"gpu0": budget})
    drivers = {
        n: FakeDriver(n, gpu, "gpu0", gb, tier=Tier.HOT if n in w["hot"] else Tier.COLD,  # type: ignore[operator]
                      wake_s=wake_ms[n] / 1000, sleep_s=sleep_ms[n] / 1000)
        for n, gb in sizes.items()
    }  # fmt: skip
    for n in failing:  # the first wake of these fails (before it claims memory)
        drivers[n].fail_wakes.append(RuntimeError("CUDA out of memory"))
    for n in w["hanging"]:  # type: ignore[attr-defined]
        drivers[n].hang_wakes = 1  # claims memory, then times out
    residents = [
        ExpertResidency(n, gb, "gpu0", drivers[n], sleep_level=levels[n],
                        pinned=n in w["pinned"])  # type: ignore[operator]
        for n, gb in sizes.items()
    ]  # fmt: skip
    sched = TierScheduler(
        residents, {"gpu0": budget}, EVICTION_POLICIES[w["policy"]](),  # type: ignore[index]
        mode=w["mode"], max_wait_s=w["max_wait_s"], failure_backoff_s=0.0,  # type: ignore[arg-type]
        wake_timeout_s=0.02, queue_timeout_s=0.05,
    )  # fmt: skip

    def check(where: str) -> None:
        used = sched.used_gb("gpu0")
        assert used <= budget + 1e-9, f"{where}: scheduler holds {used}/{budget} GB"
        # What the scheduler counts covers what the GPU actually holds.
        assert gpu.used_gb.get("gpu0", 0.0) <= used + 1e-9, (where, gpu.used_gb, used)

    original = sched.reschedule

    def checked_schedule() -> None:
        original()
        check("schedule")

    sched.reschedule = checked_schedule  # type: ignore[method-assign]
    for d in drivers.values():
        d.on_wake = lambda d: check(f"wake {d.name}")

    await sched.start()
    await settle(sched)
    outcomes: list[str] = []

    async def request(name: str, arrive_ms: int, hold_ms: int) -> None:
        await asyncio.sleep(arrive_ms / 1000)
        try:
            await sched.acquire(name)
        except UpstreamUnavailable:
            outcomes.append("503")
            return
        except UpstreamTimeout:  # e.g. waiting behind a pinned expert
            outcomes.append("504")
            return
        try:
            assert drivers[name].tier == Tier.HOT, f"{name} granted while {drivers[name].tier}"
            assert sched.experts[name].tier == Tier.HOT
            await asyncio.sleep(hold_ms / 1000)
        finally:
            sched.release(name)
        outcomes.append("200")

    tasks = []
    for name, arrive, hold, kind in requests:
        task = asyncio.create_task(request(name, arrive, hold))
        tasks.append(task)
        if kind == "cancel":
            asyncio.get_running_loop().call_later((arrive + 1) / 1000, task.cancel)
    # Liveness: every request ends (served, failed fast, or cancelled) well within 5 s.
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks, return_exceptions=True)
        await settle(sched)
    assert gpu.violations == []
    for e in sched.experts.values():
        assert e.in_flight == 0, e
        assert not e.waiters, e
        assert e.transition is None
        # The scheduler's view matches the driver's.
        assert (e.tier == Tier.HOT) == drivers[e.name].on_gpu, (e, drivers[e.name].tier)
        if e.pinned:
            assert drivers[e.name].sleeps == [], e
    served = [t for t in tasks if not t.cancelled()]
    assert len(outcomes) == len(served)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_workloads())
def test_budget_invariant_holds_under_random_concurrent_workloads(w: dict[str, object]) -> None:
    asyncio.run(_run_workload(w))


# --- starvation ---------------------------------------------------------------------------


async def test_grouped_a_busy_stream_does_not_starve_another_expert_beyond_max_wait() -> None:
    """The scheduler's clock is ours: "a" gets a new request every 20 ms and each is
    released only after the next one is in, so "a" is never idle."""
    clock = Clock()
    max_wait, step = 0.15, 0.02
    sched, drivers, gpu = build(
        {"a": 8, "b": 8}, 10, hot=["a"], mode="grouped", max_wait_s=max_wait, clock=clock
    )
    await sched.start()
    a = sched.experts["a"]
    await sched.acquire("a")
    b = asyncio.create_task(sched.acquire("b"))
    await wait_for(lambda: len(sched.experts["b"].waiters) == 1)
    b_since = clock.now
    queued: list[asyncio.Task[None]] = []
    while not b.done():
        assert clock.now - b_since <= max_wait + 2 * step, "b starved"
        clock.now += step
        nxt = asyncio.create_task(sched.acquire("a"))
        await asyncio.sleep(0)
        if nxt.done():  # let in: the busy group goes on
            assert clock.now - b_since < max_wait + step + 1e-9
        else:  # b starves: "a" drains, and new requests for it queue
            assert clock.now - b_since >= max_wait
            assert a.draining
            queued.append(nxt)
        sched.release("a")  # the previous request ends
        await settle(sched)
    # Starvation is noticed at the first scheduling event after max_wait (here, a step
    # later); "a" then drains the requests in flight (one, a step long); b wakes.
    assert max_wait <= clock.now - b_since <= max_wait + 2 * step
    assert drivers["b"].wakes == [Tier.COLD]
    assert (a.tier, a.in_flight) == (Tier.WARM, 0)
    sched.release("b")
    await asyncio.gather(*queued)  # and the queued ones for "a" are served after b
    assert a.in_flight == len(queued)
    assert gpu.violations == []


async def test_grouped_without_starvation_waits_for_the_busy_group() -> None:
    sched, drivers, _ = build({"a": 8, "b": 8}, 10, hot=["a"], mode="grouped", max_wait_s=60.0)
    await sched.start()
    await sched.acquire("a")
    b = asyncio.create_task(sched.acquire("b"))
    for _ in range(5):
        await sched.acquire("a")  # new requests go straight in
        sched.release("a")
        await asyncio.sleep(0.001)
    assert not b.done()
    assert not sched.experts["a"].draining
    sched.release("a")  # now idle: it may go
    await asyncio.wait_for(b, 1.0)
    sched.release("b")
    assert drivers["a"].sleeps == [1]


async def test_fifo_swaps_a_busy_expert_without_waiting_for_max_wait() -> None:
    sched, _, _ = build(
        {"a": 8, "b": 8}, 10, hot=["a"], mode="fifo", max_wait_s=10.0,
        driver_kw={"wake_s": 0.01},
    )  # fmt: skip
    await sched.start()
    await sched.acquire("a")
    b = asyncio.create_task(sched.acquire("b"))
    await asyncio.sleep(0.02)
    assert sched.experts["a"].draining  # busy, but fifo drains it for the older request
    t0 = time.monotonic()
    sched.release("a")
    await b
    assert time.monotonic() - t0 < 0.5
    sched.release("b")


# --- grouped vs fifo ----------------------------------------------------------------------


async def _serve_pattern(mode: str, pattern: list[str]) -> tuple[list[str], int]:
    """All cold, budget for one; "a" is requested first, ``pattern`` arrives while it wakes."""
    sched, drivers, gpu = build(
        {"a": 8, "b": 8, "c": 8}, 10, mode=mode, max_wait_s=60.0,
        driver_kw={"wake_s": 0.005},
    )  # fmt: skip
    await sched.start()
    drivers["a"].gate = asyncio.Event()
    order: list[str] = []

    async def request(name: str) -> None:
        async with sched.hold(name):
            order.append(name)
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(request("a"))]
    await wait_for(lambda: sched.experts["a"].transition == "waking")
    for name in pattern:
        tasks.append(asyncio.create_task(request(name)))
        await asyncio.sleep(0.001)  # distinct arrival times
    drivers["a"].gate.set()
    await asyncio.gather(*tasks)
    assert gpu.violations == []
    return order, sum(len(d.wakes) for d in drivers.values())


async def test_grouped_wakes_the_biggest_group_first_and_serves_each_group_whole() -> None:
    order, wakes = await _serve_pattern("grouped", ["c", "b", "c", "b", "b"])
    # "c" waited longest, but "b" has three waiting requests.
    assert order == ["a", "b", "b", "b", "c", "c"]
    assert wakes == 3


async def test_fifo_serves_in_arrival_order_with_more_switches() -> None:
    order, wakes = await _serve_pattern("fifo", ["c", "b", "c", "b", "b"])
    assert order == ["a", "c", "b", "c", "b", "b"]
    assert wakes == 5


async def test_grouped_serves_an_awake_experts_whole_queue_before_evicting_it() -> None:
    sched, drivers, _ = build({"a": 8, "b": 8}, 10, hot=["a"], mode="grouped", max_wait_s=60.0)
    await sched.start()
    order: list[str] = []

    done = asyncio.Event()

    async def request(name: str) -> None:
        async with sched.hold(name):
            order.append(name)
            await done.wait()

    first = asyncio.create_task(request("a"))
    await wait_for(lambda: order == ["a"])
    b = asyncio.create_task(request("b"))
    await wait_for(lambda: len(sched.experts["b"].waiters) == 1)
    more = [asyncio.create_task(request("a")) for _ in range(3)]
    await wait_for(lambda: len(order) == 4)
    assert not sched.experts["a"].draining
    assert sched.experts["a"].in_flight == 4
    done.set()
    await asyncio.gather(first, b, *more)
    assert order == ["a", "a", "a", "a", "b"]
    assert drivers["a"].sleeps == [1]


# --- failures -----------------------------------------------------------------------------


async def test_a_failed_wake_fails_every_waiter_and_backs_off_then_retries() -> None:
    clock = Clock()
    sched, drivers, _ = build(
        {"a": 4}, 10, failure_backoff_s=30.0, clock=clock, driver_kw={"wake_s": 0.01}
    )
    await sched.start()
    drivers["a"].fail_wakes.append(RuntimeError("CUDA out of memory"))
    results = await asyncio.gather(*(sched.acquire("a") for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, UpstreamUnavailable) for r in results), results
    assert all("CUDA out of memory" in str(r) for r in results)
    e = sched.experts["a"]
    assert (e.wake_failures, e.tier, e.transition, e.in_flight) == (1, Tier.COLD, None, 0)
    assert not e.waiters
    # Within the backoff: fail fast, without another wake.
    clock.now += 29.0
    with pytest.raises(UpstreamUnavailable, match="retry after"):
        await sched.acquire("a")
    assert len(drivers["a"].wakes) == 1
    # After it: tried again.
    clock.now += 2.0
    await sched.acquire("a")
    assert len(drivers["a"].wakes) == 2
    assert e.tier == Tier.HOT
    sched.release("a")


async def test_a_wake_that_times_out_is_a_503_and_keeps_its_memory_counted() -> None:
    sched, drivers, gpu = build(
        {"a": 6, "b": 6}, 10, wake_timeout_s=0.03, failure_backoff_s=60.0,
        driver_kw={"sleep_s": 0.01},
    )  # fmt: skip
    await sched.start()
    drivers["a"].wake_s = 5.0
    with pytest.raises(UpstreamUnavailable, match="timed out"):
        await sched.acquire("a")
    # The server may still hold (part of) the memory a wake that timed out claimed: the
    # scheduler must not hand it to another expert before that is undone.
    await sched.acquire("b")
    await settle(sched)
    assert gpu.violations == []
    assert sched.experts["b"].tier == Tier.HOT
    sched.release("b")


async def test_queue_timeout_is_a_504_and_leaves_no_waiter() -> None:
    sched, drivers, _ = build({"a": 8, "b": 8}, 10, hot=["a"], pinned=["a"], queue_timeout_s=0.05)
    await sched.start()
    with pytest.raises(UpstreamTimeout):
        await sched.acquire("b")
    assert not sched.experts["b"].waiters
    assert sched.experts["b"].in_flight == 0
    assert drivers["b"].wakes == []
    assert sched.experts["a"].tier == Tier.HOT


async def three_waiting() -> tuple[TierScheduler, asyncio.Event, list[asyncio.Task[None]]]:
    """Expert "a" (4 of 10 GB) whose wake waits at ``gate``; three acquires wait for it."""
    sched, drivers, _ = build({"a": 4}, 10)
    await sched.start()
    gate = drivers["a"].gate = asyncio.Event()
    waiting = [asyncio.create_task(sched.acquire("a")) for _ in range(3)]
    await wait_for(lambda: len(sched.experts["a"].waiters) == 3)
    return sched, gate, waiting


async def test_a_cancelled_acquire_leaks_nothing() -> None:
    sched, gate, waiting = await three_waiting()
    waiting[1].cancel()
    await asyncio.gather(waiting[1], return_exceptions=True)
    assert len(sched.experts["a"].waiters) == 2
    gate.set()
    await asyncio.gather(waiting[0], waiting[2])
    e = sched.experts["a"]
    assert (e.in_flight, len(e.waiters)) == (2, 0)
    sched.release("a")
    sched.release("a")
    assert e.in_flight == 0


async def test_cancelling_every_waiter_leaves_a_clean_state_and_the_expert_usable() -> None:
    sched, gate, waiting = await three_waiting()
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    gate.set()
    await settle(sched)
    e = sched.experts["a"]
    assert (e.in_flight, len(e.waiters), e.tier) == (0, 0, Tier.HOT)
    await sched.acquire("a")
    assert e.in_flight == 1
    sched.release("a")


async def test_a_grant_racing_a_cancellation_is_not_leaked() -> None:
    sched, drivers, _ = build({"a": 4}, 10)
    await sched.start()
    drivers["a"].gate = asyncio.Event()
    task = asyncio.create_task(sched.acquire("a"))
    await wait_for(lambda: len(sched.experts["a"].waiters) == 1)
    # The client goes away on the very loop turn its request is granted.
    sched.experts["a"].waiters[0].future.add_done_callback(lambda _: task.cancel())
    drivers["a"].gate.set()
    results = await asyncio.gather(task, return_exceptions=True)
    await settle(sched)
    # Either the grant was handed back, or the acquire returned and the caller owns it.
    granted = not isinstance(results[0], asyncio.CancelledError)
    assert sched.experts["a"].in_flight == (1 if granted else 0)
    if granted:
        sched.release("a")


async def test_a_grant_racing_the_queue_timeout_is_not_leaked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue timeout fires between the wake's last steps: the request is granted while
    its timeout unwinds. It must then go in (and hold its grant), or hold nothing."""
    loop = asyncio.get_running_loop()
    queue_s = 123.0
    real_timeout = asyncio.timeout
    deadlines: list[asyncio.Timeout] = []

    def recording_timeout(delay: float | None) -> asyncio.Timeout:
        cm = real_timeout(delay)
        if delay == queue_s:  # the request's queue timeout, to fire it on a chosen turn
            deadlines.append(cm)
        return cm

    monkeypatch.setattr(asyncio, "timeout", recording_timeout)
    sched, drivers, _ = build({"a": 4}, 10, queue_timeout_s=queue_s)
    await sched.start()
    gate = drivers["a"].gate = asyncio.Event()
    task = asyncio.create_task(sched.acquire("a"))
    await wait_for(lambda: bool(deadlines))
    deadline = deadlines.pop()

    def wake_ends_as_time_runs_out() -> None:
        gate.set()  # the wake returns, and grants, two loop turns from now...
        deadline.reschedule(loop.time())  # ...and the queue timeout fires on the first

    loop.call_soon(wake_ends_as_time_runs_out)
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    assert deadline.expired()
    if isinstance(outcome, UpstreamTimeout):
        assert sched.experts["a"].in_flight == 0, "timed out, yet its grant was kept"
    else:
        assert outcome is None, outcome
        assert sched.experts["a"].in_flight == 1
        sched.release("a")
    monkeypatch.undo()
    await settle(sched)
    assert sched.experts["a"].in_flight == 0


async def test_a_failed_sleep_keeps_the_expert_hot_and_serving() -> None:
    sched, drivers, gpu = build(
        {"a": 8, "b": 8}, 10, hot=["a"], queue_timeout_s=0.2, failure_backoff_s=60.0
    )
    await sched.start()
    drivers["a"].fail_sleep = RuntimeError("sleep endpoint answered 500")
    b = asyncio.create_task(sched.acquire("b"))
    await wait_for(lambda: len(drivers["a"].sleeps) >= 1)
    await asyncio.sleep(0.01)
    e = sched.experts["a"]
    assert e.tier == Tier.HOT
    assert e.transition is None
    assert "sleep failed" in e.last_error
    # Still serving.
    await asyncio.wait_for(sched.acquire("a"), 0.1)
    sched.release("a")
    with pytest.raises(UpstreamTimeout):
        await b
    # A failing sleep is not retried in a tight loop while "b" waits.
    assert len(drivers["a"].sleeps) <= 3, len(drivers["a"].sleeps)
    assert gpu.violations == []


async def test_after_a_failed_sleep_the_eviction_is_retried_once_the_backoff_ends() -> None:
    sched, drivers, gpu = build({"a": 8, "b": 8}, 10, hot=["a"], failure_backoff_s=0.05)
    await sched.start()
    drivers["a"].fail_sleep = RuntimeError("sleep endpoint answered 500")
    b = asyncio.create_task(sched.acquire("b"))
    await wait_for(lambda: len(drivers["a"].sleeps) == 1)
    drivers["a"].fail_sleep = None
    # No other event happens: the backoff's own timer looks again.
    await asyncio.wait_for(b, 1.0)
    sched.release("b")
    assert drivers["a"].sleeps == [1, 1]
    assert sched.experts["a"].tier == Tier.WARM
    assert gpu.violations == []


# --- admin operations ---------------------------------------------------------------------


async def test_admin_wake_and_sleep() -> None:
    sched, drivers, _ = build({"a": 4}, 10)
    await sched.start()
    await sched.wake("a")
    e = sched.experts["a"]
    assert (e.tier, e.in_flight) == (Tier.HOT, 0)
    await sched.sleep("a")
    assert e.tier == Tier.WARM
    assert drivers["a"].sleeps == [1]
    await sched.sleep("a")  # already asleep: nothing to do
    assert drivers["a"].sleeps == [1]


async def test_admin_sleep_waits_for_in_flight_requests() -> None:
    sched, _, _ = build({"a": 4}, 10, hot=["a"])
    await sched.start()
    await sched.acquire("a")
    sleeping = asyncio.create_task(sched.sleep("a"))
    await asyncio.sleep(0.01)
    e = sched.experts["a"]
    assert (e.tier, e.draining, sleeping.done()) == (Tier.HOT, True, False)
    sched.release("a")
    await sleeping
    assert e.tier == Tier.WARM


async def test_admin_sleep_during_a_wake_puts_it_to_sleep_after_the_wake() -> None:
    sched, drivers, _ = build({"a": 4}, 10)
    await sched.start()
    drivers["a"].gate = asyncio.Event()
    sched.prewarm()
    assert sched.experts["a"].transition == "waking"
    sleeping = asyncio.create_task(sched.sleep("a"))
    await asyncio.sleep(0.005)
    drivers["a"].gate.set()
    await sleeping
    assert sched.experts["a"].tier == Tier.WARM


async def test_admin_sleep_of_a_pinned_expert_is_refused() -> None:
    sched, _, _ = build({"a": 4}, 10, hot=["a"], pinned=["a"])
    await sched.start()
    with pytest.raises(UpstreamUnavailable, match="pinned"):
        await sched.sleep("a")


async def test_prewarm_wakes_pinned_first_then_catalog_order_within_budget() -> None:
    sched, _, gpu = build({"a": 6, "b": 4, "c": 6}, 10, pinned=["c"])
    await sched.start()
    sched.prewarm()
    await settle(sched)
    tiers = {n: e.tier for n, e in sched.experts.items()}
    assert tiers == {"a": Tier.COLD, "b": Tier.HOT, "c": Tier.HOT}
    assert gpu.violations == []


async def test_expected_wake_s() -> None:
    clock = Clock()
    sched, drivers, _ = build({"a": 4, "b": 4}, 10, hot=["a"], clock=clock)
    await sched.start()
    assert sched.expected_wake_s("a") == 0.0
    assert sched.expected_wake_s("unmanaged") == 0.0
    assert sched.expected_wake_s("b") == 30.0  # cold, never measured: the default
    drivers["b"].gate = asyncio.Event()
    task = asyncio.create_task(sched.acquire("b"))
    await wait_for(lambda: sched.experts["b"].transition == "waking")
    clock.now += 10.0
    assert sched.expected_wake_s("b") == pytest.approx(20.0)
    clock.now += 2.0
    drivers["b"].gate.set()
    await task
    sched.release("b")
    assert sched.experts["b"].wake_s[Tier.COLD] == pytest.approx(12.0)


async def test_aclose_fails_whoever_waits() -> None:
    sched, drivers, _ = build({"a": 4}, 10)
    await sched.start()
    drivers["a"].gate = asyncio.Event()
    task = asyncio.create_task(sched.acquire("a"))
    await wait_for(lambda: sched.experts["a"].transition == "waking")
    await sched.aclose()
    with pytest.raises(UpstreamUnavailable):
        await task
