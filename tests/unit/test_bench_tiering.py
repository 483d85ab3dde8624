"""The tiering benchmark (``bench/tiering.py``) and its virtual-time event loop.

The loop must run timers instantly but in order, keep real cross-thread wake-ups
working, and refuse to hang; a tiny benchmark run must finish with no budget
violation and end with the JSON line the README documents.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from bench.tiering import (
    POLICIES,
    PROFILES,
    PoolSpec,
    TraceSpec,
    main,
    make_trace,
    percentile,
    popularity,
    run_virtual,
)
from bench.virtual_time import VirtualTimeDeadlock, VirtualTimeLoop

pytestmark = pytest.mark.unit


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
    assert set(results) == {"fifo", "lru", "ours", "all_awake"}
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
    assert set(obj) == {"params", "policies", "checks", "runtime_s"}
    assert list(obj["policies"]) == ["fifo", "lru", "ours", "all_awake"]
    keys = {"throughput_rps", "p50_s", "p99_s", "switches", "hot_hit_rate", "violations",
            "mean_wait_s", "completed", "errors"}  # fmt: skip
    for r in obj["policies"].values():
        assert keys <= set(r)
        assert r["violations"] == 0
    assert obj["params"]["trace"]["requests"] == 50
    assert obj["params"]["profile"]["name"] == "8b"
    assert obj["checks"]["no_violations"] is True
