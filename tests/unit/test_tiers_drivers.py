"""Residency drivers: vLLM's sleep API over fake sleep-mode replicas, and process tiering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coe_router.config import UpstreamSettings
from coe_router.errors import UpstreamBadResponse, UpstreamUnavailable
from coe_router.experts.replica import Replica
from coe_router.experts.tiering.drivers import ProcessDriver, VLLMSleepDriver
from coe_router.experts.tiering.eviction import LRUPolicy
from coe_router.experts.tiering.scheduler import TierScheduler
from coe_router.experts.tiering.tiers import ExpertResidency, Tier
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica, as_dict
from tests.unit.tier_fakes import settle

WAKE_CALLS = ("POST /wake_up", "POST /collective_rpc")


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        await r.aclose()


@pytest.fixture
def make_fleet(replicas: list[Replica]) -> Callable[..., tuple[FakeSleepFleet, Any]]:
    def build(budget: float = 20.0) -> tuple[FakeSleepFleet, Any]:
        fleet = FakeSleepFleet(FakeGPU({"gpu0": budget}))

        def replica(rep: SleepReplica, *, awake: bool = True) -> Replica:
            url = fleet.add(rep, awake=awake)
            r = Replica(rep.name, url, UpstreamSettings(), transport=fleet.transport())
            replicas.append(r)
            return r

        return fleet, replica

    return build


async def asleep(make_fleet: Callable[..., Any], level: int) -> tuple[FakeSleepFleet, Replica]:
    """A fleet with one replica "a", put to sleep at ``level`` behind any driver's back."""
    fleet, replica = make_fleet()
    r: Replica = replica(SleepReplica("a", 8))
    assert (await r.client.post("/sleep", params={"level": level})).status_code == 200
    return fleet, r


async def ask(replica: Replica) -> str:
    resp = await replica.client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200, resp.text
    content: str = resp.json()["choices"][0]["message"]["content"]
    return content


def wake_calls(rep: SleepReplica) -> list[str]:
    return [c for c in rep.calls if c.startswith(WAKE_CALLS)]


# --- VLLMSleepDriver ----------------------------------------------------------------------


async def test_level_1_sleep_and_plain_wake_up(make_fleet: Callable[..., Any]) -> None:
    fleet, replica = make_fleet()
    r = replica(SleepReplica("a", 8))
    driver = VLLMSleepDriver("a", [r])
    assert await driver.probe() == Tier.HOT
    assert await driver.sleep(1) == Tier.WARM
    rep = fleet.replicas["a"]
    assert "POST /sleep?level=1&mode=wait" in rep.calls
    assert as_dict(rep) == {"weights": "cpu", "kv": False, "level": 1}
    assert fleet.gpu.used_gb["gpu0"] == 0
    assert await driver.probe() == Tier.WARM
    rep.calls.clear()
    await driver.wake(Tier.WARM)
    assert wake_calls(rep) == ["POST /wake_up"]
    assert rep.calls[-1] == "GET /is_sleeping"
    assert await ask(r) == "a says hi"
    assert await driver.probe() == Tier.HOT


async def test_level_2_wake_reloads_weights_in_vllms_order(make_fleet: Callable[..., Any]) -> None:
    fleet, replica = make_fleet()
    r = replica(SleepReplica("a", 8))
    driver = VLLMSleepDriver("a", [r])
    assert await driver.sleep(2) == Tier.COLD
    rep = fleet.replicas["a"]
    assert "POST /sleep?level=2&mode=wait" in rep.calls
    assert await driver.probe() == Tier.COLD
    rep.calls.clear()
    await driver.wake(Tier.COLD)
    assert wake_calls(rep) == [
        "POST /wake_up?tags=weights",
        "POST /collective_rpc",
        "POST /wake_up?tags=kv_cache",
    ]
    assert await ask(r) == "a says hi"  # not garbage: the weights were reloaded
    assert as_dict(rep) == {"weights": "gpu", "kv": True, "level": None}


async def test_a_plain_wake_after_level_2_would_answer_garbage(
    make_fleet: Callable[..., Any],
) -> None:
    """The control for the test above: the fake does catch a missing reload."""
    _, r = await asleep(make_fleet, level=2)
    await r.client.post("/wake_up")
    assert "garbage" in await ask(r)


def _vllm_strict(fleet: FakeSleepFleet, bodies: list[Any] | None = None) -> httpx.MockTransport:
    """The fleet, plus what vLLM's executor does and the fake does not: ``/sleep`` while
    anything still sleeps is ignored (``Executor is already sleeping``)."""

    async def handle(request: httpx.Request) -> httpx.Response:
        rep = fleet.replicas[request.url.host]
        if request.url.path == "/sleep" and rep.sleeping:
            rep.calls.append("POST /sleep (ignored: already sleeping)")
            return httpx.Response(200)
        if request.url.path == "/collective_rpc" and bodies is not None:
            bodies.append(json.loads(await request.aread()))
        return await fleet.handle(request)

    return httpx.MockTransport(handle)


async def test_the_reload_rpc_names_reload_weights(replicas: list[Replica]) -> None:
    bodies: list[Any] = []
    fleet = FakeSleepFleet(FakeGPU({"gpu0": 20}))
    url = fleet.add(SleepReplica("a", 8), awake=False)
    r = Replica("a", url, UpstreamSettings(), transport=_vllm_strict(fleet, bodies))
    replicas.append(r)
    await VLLMSleepDriver("a", [r]).wake(Tier.COLD)
    assert bodies == [{"method": "reload_weights"}]


async def test_an_expert_found_asleep_at_start_is_woken_with_a_reload(
    make_fleet: Callable[..., Any],
) -> None:
    # Asleep at level 1 by someone else: the level is not reported, so it counts as cold.
    fleet, r = await asleep(make_fleet, level=1)
    driver = VLLMSleepDriver("a", [r])
    tier = await driver.probe()
    assert tier == Tier.COLD
    rep = fleet.replicas["a"]
    rep.calls.clear()
    await driver.wake(tier)
    assert wake_calls(rep) == [
        "POST /wake_up?tags=weights",
        "POST /collective_rpc",
        "POST /wake_up?tags=kv_cache",
    ]
    assert await ask(r) == "a says hi"


async def test_a_warm_wake_without_a_known_level_reloads(make_fleet: Callable[..., Any]) -> None:
    """Even when told "warm", a driver that did not put it to sleep itself reloads."""
    fleet, replica = make_fleet()
    r = replica(SleepReplica("a", 8), awake=False)
    await VLLMSleepDriver("a", [r]).wake(Tier.WARM)
    assert "POST /collective_rpc" in fleet.replicas["a"].calls
    assert await ask(r) == "a says hi"


async def test_every_replica_is_slept_and_woken(make_fleet: Callable[..., Any]) -> None:
    fleet, replica = make_fleet()
    rs = [replica(SleepReplica(f"a{i}", 4)) for i in range(3)]
    driver = VLLMSleepDriver("a", rs)
    await driver.sleep(1)
    assert all(fleet.replicas[f"a{i}"].level == 1 for i in range(3))
    await driver.wake(Tier.WARM)
    assert [await ask(r) for r in rs] == ["a0 says hi", "a1 says hi", "a2 says hi"]


async def test_a_wake_answering_500_raises(make_fleet: Callable[..., Any]) -> None:
    _, replica = make_fleet()
    r = replica(SleepReplica("a", 8, fail_wake=True), awake=False)
    with pytest.raises(UpstreamBadResponse, match="500"):
        await VLLMSleepDriver("a", [r]).wake(Tier.COLD)


async def test_an_unreachable_replica_probes_cold() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    r = Replica("a", "http://a:8000", UpstreamSettings(), transport=httpx.MockTransport(refuse))
    try:
        assert await VLLMSleepDriver("a", [r]).probe() == Tier.COLD
        with pytest.raises(UpstreamUnavailable):
            await VLLMSleepDriver("a", [r]).wake(Tier.WARM)
    finally:
        await r.aclose()


async def test_sleep_after_a_wake_that_stopped_halfway_frees_the_memory(
    replicas: list[Replica],
) -> None:
    """vLLM ignores /sleep while any tag sleeps; weights allocated but no KV cache yet is
    such a state, and it holds memory: the driver finishes the wake, then sleeps."""
    fleet = FakeSleepFleet(FakeGPU({"gpu0": 20}))
    url = fleet.add(SleepReplica("a", 8, reload_s=10.0), awake=False)
    r = Replica("a", url, UpstreamSettings(), transport=_vllm_strict(fleet))
    replicas.append(r)
    driver = VLLMSleepDriver("a", [r])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(driver.wake(Tier.COLD), 0.02)
    assert fleet.gpu.used_gb["gpu0"] == 8  # allocated, never loaded
    assert await driver.probe() == Tier.COLD
    assert await driver.sleep(2) == Tier.COLD
    assert fleet.gpu.used_gb["gpu0"] == 0
    rep = fleet.replicas["a"]
    assert "POST /sleep (ignored: already sleeping)" not in rep.calls
    rep.reload_s = 0.0
    await driver.wake(Tier.COLD)
    assert await ask(r) == "a says hi"


# --- VLLMSleepDriver under the scheduler --------------------------------------------------


def _scheduler(
    fleet: FakeSleepFleet, drivers: dict[str, tuple[float, VLLMSleepDriver]], budget: float,
    **kw: Any,
) -> TierScheduler:  # fmt: skip
    residents = [
        ExpertResidency(n, gb, "gpu0", d, sleep_level=kw.pop(f"level_{n}", 1))
        for n, (gb, d) in drivers.items()
    ]
    return TierScheduler(residents, {"gpu0": budget}, LRUPolicy(), **kw)


async def test_concurrent_requests_share_one_vllm_wake(make_fleet: Callable[..., Any]) -> None:
    fleet, replica = make_fleet()
    r = replica(SleepReplica("a", 8, wake_s=0.01, reload_s=0.02), awake=False)
    sched = _scheduler(fleet, {"a": (8, VLLMSleepDriver("a", [r]))}, 20)
    await sched.start()
    order: list[int] = []

    async def request(i: int) -> str:
        async with sched.hold("a"):
            order.append(i)
            return await ask(r)

    answers = await asyncio.gather(*(request(i) for i in range(10)))
    assert answers == ["a says hi"] * 10
    assert order == list(range(10))
    assert wake_calls(fleet.replicas["a"]) == [
        "POST /wake_up?tags=weights",
        "POST /collective_rpc",
        "POST /wake_up?tags=kv_cache",
    ]


async def test_a_timed_out_wake_gives_its_memory_back_before_another_wakes(
    make_fleet: Callable[..., Any],
) -> None:
    fleet, replica = make_fleet(budget=10)
    ra = replica(SleepReplica("a", 8, reload_s=10.0), awake=False)
    rb = replica(SleepReplica("b", 8), awake=False)
    sched = _scheduler(
        fleet, {"a": (8, VLLMSleepDriver("a", [ra])), "b": (8, VLLMSleepDriver("b", [rb]))},
        10, wake_timeout_s=0.05, failure_backoff_s=60.0,
    )  # fmt: skip
    await sched.start()
    with pytest.raises(UpstreamUnavailable, match="timed out"):
        await sched.acquire("a")
    async with sched.hold("b"):
        assert await ask(rb) == "b says hi"
    await settle(sched)
    assert fleet.gpu.violations == []
    assert sched.experts["a"].tier == Tier.COLD
    assert fleet.gpu.used_gb["gpu0"] == 8


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    budget=st.integers(8, 16),
    sizes=st.lists(st.integers(2, 8), min_size=2, max_size=4),
    levels=st.lists(st.sampled_from([1, 2]), min_size=4, max_size=4),
    mode=st.sampled_from(["grouped", "fifo"]),
    requests=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12),
)
def test_budget_holds_over_the_fake_fleet(
    budget: int, sizes: list[int], levels: list[int], mode: str,
    requests: list[tuple[int, int]],
) -> None:  # fmt: skip
    async def run() -> None:
        fleet = FakeSleepFleet(FakeGPU({"gpu0": float(budget)}))
        names = [f"e{i}" for i in range(len(sizes))]
        reps: list[Replica] = []
        residents = []
        for i, (name, gb) in enumerate(zip(names, sizes, strict=True)):
            url = fleet.add(
                SleepReplica(name, gb, wake_s=0.001, reload_s=0.002,
                             sleep_s={1: 0.001, 2: 0.001}),
                awake=False,
            )  # fmt: skip
            reps.append(Replica(name, url, UpstreamSettings(), transport=fleet.transport()))
            residents.append(ExpertResidency(name, gb, "gpu0", VLLMSleepDriver(name, [reps[-1]]),
                                             sleep_level=levels[i]))  # fmt: skip
        sched = TierScheduler(residents, {"gpu0": float(budget)}, LRUPolicy(),
                              mode=mode, max_wait_s=0.005)  # type: ignore[arg-type]  # fmt: skip
        await sched.start()

        async def request(i: int, arrive_ms: int) -> str:
            await asyncio.sleep(arrive_ms / 1000)
            async with sched.hold(names[i % len(names)]):
                return await ask(reps[i % len(names)])

        try:
            async with asyncio.timeout(5):
                answers = await asyncio.gather(*(request(i, a) for i, a in requests))
                await settle(sched)
        finally:
            for r in reps:
                await r.aclose()
        assert all(a.endswith("says hi") for a in answers), answers
        assert fleet.gpu.violations == []

    asyncio.run(run())


# --- ProcessDriver ------------------------------------------------------------------------


class FakeProcess:
    """What :class:`ProcessDriver` and :class:`Replica` use of a LocalProcess."""

    def __init__(self, *, exits: bool = False, loading_polls: int = 2) -> None:
        self.state = "stopped"
        self.detail = "not started"
        self.exits = exits
        self.loading_polls = loading_polls
        self.starts = 0
        self.stops = 0
        self.prepares = 0
        self.elapsed_s = 0.0

    async def prepare(self) -> None:
        self.prepares += 1  # the checkpoint exists: nothing to do

    async def start(self) -> None:
        self.starts += 1
        self.state, self.detail = "starting", "loading"
        if self.exits:
            self.state, self.detail = "exited", "process exited with code 1 (see x.log)"

    async def stop(self) -> None:
        self.stops += 1
        self.state, self.detail = "stopped", "stopped"

    def mark_ready(self) -> None:
        if self.state == "starting":
            self.state, self.detail = "ready", ""


def _process_replica(proc: FakeProcess) -> tuple[Replica, list[str]]:
    polls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        polls.append(request.url.path)
        if proc.state not in ("starting", "ready"):
            raise httpx.ConnectError("refused", request=request)
        if proc.loading_polls > 0:
            proc.loading_polls -= 1
            return httpx.Response(503)
        return httpx.Response(200)

    replica = Replica(
        "p", "http://p:8000", UpstreamSettings(), process=proc,  # type: ignore[arg-type]
        transport=httpx.MockTransport(handle),
    )  # fmt: skip
    return replica, polls


async def test_process_driver_starts_the_process_and_waits_for_health() -> None:
    proc = FakeProcess()
    replica, polls = _process_replica(proc)
    driver = ProcessDriver(proc, replica, poll_s=0.001)  # type: ignore[arg-type]
    try:
        assert driver.can_sleep is False
        assert await driver.probe() == Tier.COLD
        await driver.wake(Tier.COLD)
        assert proc.starts == 1
        assert proc.prepares == 1  # a fresh machine: the first wake prepares the checkpoint
        assert (proc.state, replica.state) == ("ready", "up")
        assert polls.count("/health") == 3  # two "loading" answers, then up
        assert await driver.probe() == Tier.HOT
        assert await driver.sleep(1) == Tier.COLD  # any level: the process stops
        assert proc.stops == 1
        assert (replica.state, replica.detail) == ("down", "stopped by the tier scheduler")
        assert await driver.probe() == Tier.COLD
    finally:
        await replica.aclose()


async def test_process_driver_does_not_start_a_running_process_twice() -> None:
    proc = FakeProcess(loading_polls=0)
    proc.state = "starting"
    replica, _ = _process_replica(proc)
    try:
        await ProcessDriver(proc, replica, poll_s=0.001).wake(Tier.COLD)  # type: ignore[arg-type]
        assert proc.starts == 0
    finally:
        await replica.aclose()


async def test_process_that_exits_fails_the_wake_with_its_detail() -> None:
    proc = FakeProcess(exits=True)
    replica, _ = _process_replica(proc)
    driver = ProcessDriver(proc, replica, poll_s=0.001)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match="exited with code 1"):
            await driver.wake(Tier.COLD)
        # Through the scheduler: a 503 that says why.
        e = ExpertResidency("p", 4, "cpu", driver)
        assert e.evict_tier == Tier.COLD
        sched = TierScheduler([e], {"cpu": 8}, LRUPolicy(), failure_backoff_s=60.0)
        await sched.start()
        with pytest.raises(UpstreamUnavailable, match="exited with code 1"):
            await sched.acquire("p")
        await settle(sched)
        assert (e.tier, e.wake_failures, e.in_flight) == (Tier.COLD, 1, 0)
    finally:
        await replica.aclose()


async def test_scheduler_stops_a_process_expert_to_make_room() -> None:
    procs = {n: FakeProcess(loading_polls=0) for n in "ab"}
    made = {n: _process_replica(p)[0] for n, p in procs.items()}
    try:
        residents = [
            ExpertResidency(n, 6, "cpu", ProcessDriver(procs[n], made[n], poll_s=0.001))  # type: ignore[arg-type]
            for n in "ab"
        ]
        sched = TierScheduler(residents, {"cpu": 8}, LRUPolicy())
        await sched.start()
        async with sched.hold("a"):
            assert procs["a"].state == "ready"
        async with sched.hold("b"):
            assert procs["b"].state == "ready"
            assert procs["a"].state == "stopped"
        assert sched.experts["a"].tier == Tier.COLD
    finally:
        for r in made.values():
            await r.aclose()
