"""The tiering benchmark (``bench/tiering.py`` and its ``tiering_*`` modules), its
virtual-time event loop and its llama-swap baseline (``bench/collation.py``).

The loop must run timers instantly but in order, keep real cross-thread wake-ups
working, and refuse to hang; a tiny benchmark run must finish with no budget
violation and end with the JSON line the README documents. The llama-swap port must
collate (ABCABC served as AABBCC with room for one model), evict by cost, and have no
starvation bound, where ours bounds the cold request's wait.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from bench.collation import CollationScheduler, Matrix
from bench.tiering import main
from bench.tiering_policies import POLICIES, PoolSpec
from bench.tiering_replay import run_starvation, run_virtual
from bench.tiering_report import starvation_bound_s
from bench.tiering_trace import (
    PROFILES,
    StarvationSpec,
    TraceSpec,
    make_starvation_trace,
    make_trace,
    popularity,
)
from bench.virtual_time import VirtualTimeDeadlock, VirtualTimeLoop
from coe_router.experts.tiering.tiers import ExpertResidency, Tier
from tests.support import percentile


def run(coro: Any, **loop_kw: Any) -> Any:
    """Run ``coro`` on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(**loop_kw)) as runner:
        return runner.run(coro)


def test_sleeps_take_virtual_time_not_real_time() -> None:
    async def body() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        await asyncio.sleep(0.25)
        return t0, loop.time()

    real = time.perf_counter()
    t0, t1 = run(body())
    assert time.perf_counter() - real < 1.0
    assert t1 - t0 == pytest.approx(3600.25)


def test_timers_fire_in_order_at_their_virtual_times() -> None:
    async def body() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []

        async def sleeper(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            fired.append((name, loop.time()))

        loop.call_later(7.5, lambda: fired.append(("cb", loop.time())))
        await asyncio.gather(
            sleeper("c", 30.0), sleeper("a", 0.5), sleeper("b", 7.0), sleeper("a2", 0.5)
        )
        return fired

    fired = run(body())
    assert [n for n, _ in fired] == ["a", "a2", "b", "cb", "c"]
    assert [t for _, t in fired] == pytest.approx([0.5, 0.5, 7.0, 7.5, 30.0])


def test_timeouts_use_the_virtual_clock() -> None:
    async def body() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 10)
        return loop.time()

    assert run(body()) == pytest.approx(10.0)


def test_a_wait_that_nothing_can_end_raises_instead_of_hanging() -> None:
    async def body() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(VirtualTimeDeadlock):
        run(body(), idle_real_s=0.01)


def test_call_soon_threadsafe_still_wakes_the_loop() -> None:
    async def body() -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        threading.Timer(0.05, lambda: loop.call_soon_threadsafe(fut.set_result, "hi")).start()
        return await fut

    assert run(body(), idle_real_s=5.0) == "hi"


def test_httpx_mock_transport_runs_on_virtual_time() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(float(request.url.params["s"]))
        return httpx.Response(200, json={"t": asyncio.get_running_loop().time()})

    async def body() -> list[float]:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(handler), base_url="http://x", timeout=1.0
        ) as client:
            resps = await asyncio.gather(*(client.get("/", params={"s": s}) for s in (90, 5)))
        return [r.json()["t"] for r in resps]

    # The client's 1 s timeout is not enforced by MockTransport: a 90 s "generation" is fine.
    assert run(body()) == pytest.approx([90.0, 5.0])


def test_trace_is_deterministic_and_zipf_skewed() -> None:
    spec = TraceSpec(requests=300, experts=8, zipf=1.1, seed=3)
    a, b = make_trace(spec), make_trace(spec)
    assert a == b
    assert len(a) == 300
    assert [r.t for r in a] == sorted(r.t for r in a)
    pop = popularity(spec)
    assert sum(pop.values()) == pytest.approx(1.0)
    ranked = sorted(pop.values(), reverse=True)
    assert ranked[0] / ranked[1] == pytest.approx(2**1.1)


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


def test_a_small_replay_keeps_the_budget_and_serves_everything() -> None:
    spec = TraceSpec(requests=40, experts=4, rate=0.5, seed=1)
    pool = PoolSpec(PROFILES["small"], budget_experts=1)
    results = run_virtual(pool, spec, POLICIES)
    assert set(results) == {"fifo", "lru", "llama_swap", "ours", "all_awake"}
    for r in results.values():
        assert r["violations"] == 0
        assert r["garbage"] == 0
        assert r["completed"] == 40
        assert r["peak_gb"] <= r["budget_gb"]
    assert results["all_awake"]["switches"] == 0
    assert results["all_awake"]["hot_hit_rate"] == 1.0
    assert results["ours"]["switches"] > 0


def test_main_prints_a_table_then_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--quick", "--requests", "50", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.split()[:1] == ["ours"] for line in out)
    obj = json.loads(out[-1])
    assert set(obj) == {"params", "policies", "checks", "starvation", "runtime_s"}
    names = ["fifo", "lru", "llama_swap", "ours", "all_awake"]
    assert list(obj["policies"]) == names
    keys = {"throughput_rps", "p50_s", "p99_s", "switches", "hot_hit_rate", "violations",
            "mean_wait_s", "max_wait_s", "completed", "errors"}  # fmt: skip
    for r in obj["policies"].values():
        assert keys <= set(r)
        assert r["violations"] == 0
    assert obj["params"]["trace"]["requests"] == 50
    assert obj["params"]["profile"]["name"] == "8b"
    assert obj["checks"]["no_violations"] is True
    assert "lower_max_wait_than_llama_swap" in obj["checks"]
    starved = obj["starvation"]
    assert list(starved["policies"]) == names
    for r in starved["policies"].values():
        assert r["violations"] == 0
        assert "cold_max_wait_s" in r
    assert starved["checks"]["no_violations"] is True
    assert any(line.split()[:1] == ["llama_swap"] for line in out)


# --- the llama-swap baseline ----------------------------------------------------------------


class InstantishDriver:
    """A residency driver whose wake takes 1 s and sleep 0.5 s (virtual time)."""

    can_sleep = True

    def __init__(self, tier: Tier = Tier.COLD) -> None:
        self.tier = tier

    async def wake(self, from_tier: Tier) -> None:
        await asyncio.sleep(1.0)
        self.tier = Tier.HOT

    async def sleep(self, level: int) -> Tier:
        await asyncio.sleep(0.5)
        self.tier = Tier.WARM
        return self.tier

    async def probe(self) -> Tier:
        return self.tier


def residents(names: list[str]) -> list[ExpertResidency]:
    return [ExpertResidency(n, 10.0, "gpu0", InstantishDriver()) for n in names]


def test_llama_swap_serves_abcabc_as_aabbcc_with_room_for_one() -> None:
    async def body() -> tuple[list[str], dict[str, int]]:
        loop = asyncio.get_running_loop()
        experts = residents(["a", "b", "c"])
        sched = CollationScheduler(experts, Matrix.any_k_of("abc", 1, {}), clock=loop.time)
        await sched.start()
        served: list[str] = []

        async def one(model: str, at: float) -> None:
            await asyncio.sleep(at)
            async with sched.hold(model):
                served.append(model)
                await asyncio.sleep(2.0)  # generating

        # All six arrive while the first load is still running.
        await asyncio.gather(*(one(m, 0.1 * i) for i, m in enumerate("abcabc")))
        await sched.aclose()
        return served, {e.name: e.wakes for e in experts}

    served, wakes = run(body())
    assert served == list("aabbcc")
    assert wakes == {"a": 1, "b": 1, "c": 1}  # arrival order would need 6 loads


def test_llama_swap_evicts_the_cheapest_then_in_definition_order() -> None:
    costly = Matrix.any_k_of(["a", "b", "c"], 2, {"a": 5})
    assert costly.eviction_for("c", ["a", "b"]) == ["b"]
    assert Matrix.any_k_of(["a", "b", "c"], 2, {"b": 5}).eviction_for("c", ["a", "b"]) == ["a"]
    # Equal costs: the first set in definition order that holds c wins ({a, c}).
    assert Matrix.any_k_of(["a", "b", "c"], 2, {}).eviction_for("c", ["a", "b"]) == ["b"]
    assert costly.eviction_for("a", ["a", "b"]) == []  # already running


def test_under_collation_a_hot_stream_starves_a_cold_request_and_ours_bounds_it() -> None:
    pool = PoolSpec(PROFILES["small"], budget_experts=2)
    wanted = [p for p in POLICIES if p.name in ("llama_swap", "ours")]
    waits: dict[float, dict[str, float]] = {}
    hot_left: dict[float, float] = {}  # how long the hot streams run after the cold arrival
    for duration in (60.0, 120.0):
        spec = StarvationSpec(experts=4, hot=2, duration_s=duration, cold_requests=1)
        trace = make_starvation_trace(spec, pool.profile)
        assert sum(r.expert == spec.cold for r in trace) == 1
        results = run_starvation(pool, spec, wanted)
        for r in results.values():
            assert r["violations"] == 0
            assert r["completed"] == len(trace)
        cold = {n: r["cold_max_wait_s"] for n, r in results.items()}
        waits[duration] = cold
        # Collation serves the cold request only once the hot streams have stopped ...
        hot_left[duration] = max(r.t for r in trace if r.expert != spec.cold) - spec.cold_at_s[0]
        assert cold["llama_swap"] >= hot_left[duration]
        # ... ours drains a busy expert once the cold request waited max_wait_s.
        assert cold["ours"] <= starvation_bound_s(pool, spec)
        assert cold["ours"] >= pool.max_wait_s
    # The collation wait grows with the hot traffic; ours does not.
    grown = waits[120.0]["llama_swap"] - waits[60.0]["llama_swap"]
    assert grown >= hot_left[120.0] - hot_left[60.0] > 0
    assert waits[120.0]["ours"] <= starvation_bound_s(pool, spec)
