"""One replay of the tiering bench: a trace through one policy's scheduler, over fake vLLM
replicas that sleep and wake as vLLM does and generate in modelled time, on the
virtual-time loop; and the metrics of each replay.

The replicas are ``tests/fake_sleep.py``'s fake vLLM servers behind one
``httpx.MockTransport``; :class:`BenchFleet` adds generation (tokens x time per output
token, at most ``max_num_seqs`` sequences per replica, each slowed by ``batch_slowdown``
per extra sequence). The real :class:`~coe_router.experts.tiering.drivers.VLLMSleepDriver`
drives them through each expert's :class:`~coe_router.experts.replica.Replica`, and
:class:`~tests.fake_sleep.FakeGPU` records every moment the budget was exceeded.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.tiering_policies import DEVICE, BenchPool, PolicySpec, PoolSpec, start_pool
from bench.tiering_trace import (
    StarvationSpec,
    TraceRequest,
    TraceSpec,
    expert_names,
    make_starvation_trace,
    make_trace,
)
from bench.virtual_time import VirtualTimeLoop
from coe_router.config import UpstreamSettings
from coe_router.errors import UpstreamError
from coe_router.experts.replica import Replica
from coe_router.experts.tiering.drivers import VLLMSleepDriver
from coe_router.experts.tiering.tiers import ExpertResidency
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica
from tests.fakes import completion
from tests.support import percentile


@dataclass
class BenchFleet(FakeSleepFleet):
    """:class:`FakeSleepFleet` whose chat completions take a modelled generation time.

    A request for ``max_tokens`` tokens takes ``tokens * tpot_s * (1 + batch_slowdown *
    (b - 1))`` seconds, ``b`` being the sequences running on the replica when it starts;
    at most ``max_num_seqs`` run at once (the others queue in the replica, as in vLLM).
    The sleep-mode endpoints are :class:`FakeSleepFleet`'s, unchanged.
    """

    tpot_s: float = 0.012
    batch_slowdown: float = 0.03
    max_num_seqs: int = 16
    garbage: int = 0
    _slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _running: dict[str, int] = field(default_factory=dict)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Generation here; everything else (sleep, wake, reload, probe) as vLLM does it."""
        if request.url.path != "/v1/chat/completions":
            return await super().handle(request)
        r = self.replicas[request.url.host]
        r.calls.append(f"{request.method} {request.url.path}")
        body = json.loads(await request.aread())
        if r.sleeping:
            return httpx.Response(503, json={"error": {"message": "engine is sleeping"}})
        slots = self._slots.setdefault(r.name, asyncio.Semaphore(self.max_num_seqs))
        async with slots:
            running = self._running.get(r.name, 0) + 1
            self._running[r.name] = running
            try:
                slowdown = 1.0 + self.batch_slowdown * (running - 1)
                await asyncio.sleep(int(body["max_tokens"]) * self.tpot_s * slowdown)
            finally:
                self._running[r.name] -= 1
        r.answers += 1
        if r.weights == "unloaded":
            self.garbage += 1
            return httpx.Response(200, json=completion(body, "<garbage: weights not reloaded>"))
        return httpx.Response(200, json=completion(body, f"{r.name} says hi"))


@dataclass
class Outcome:
    """What happened to one request."""

    expert: str
    arrival: float
    hot_on_arrival: bool
    granted: float | None = None
    done: float | None = None
    error: str = ""
    #: When it failed (``error`` set): its wait ended there.
    failed: float | None = None

    @property
    def wait(self) -> float | None:
        """Seconds it waited for its expert (until let in, or until it failed)."""
        end = self.granted if self.granted is not None else self.failed
        return None if end is None else end - self.arrival


@dataclass
class Replicas:
    """The fake GPU, the fake vLLM replicas on it and one resident expert per replica."""

    gpu: FakeGPU
    fleet: BenchFleet
    clients: dict[str, Replica]
    residents: list[ExpertResidency]

    async def aclose(self) -> None:
        """Close every replica's client."""
        for r in self.clients.values():
            await r.aclose()


def make_replicas(pool: PoolSpec, n_experts: int, slots: int, awake: bool) -> Replicas:
    """``n_experts`` fake replicas sharing one GPU of ``slots`` experts' memory; all start
    awake with ``awake``, else cold."""
    prof = pool.profile
    gpu = FakeGPU({DEVICE: slots * prof.memory_gb})
    fleet = BenchFleet(
        gpu, tpot_s=prof.tpot_s, batch_slowdown=pool.batch_slowdown,
        max_num_seqs=pool.max_num_seqs,
    )  # fmt: skip
    transport = fleet.transport()
    upstream = UpstreamSettings(read_timeout_s=3600.0)
    out = Replicas(gpu, fleet, {}, [])
    for name in expert_names(n_experts):
        url = fleet.add(
            SleepReplica(
                name, prof.memory_gb, DEVICE, sleep_s=dict(prof.sleep_s),
                wake_s=prof.wake_l1_s, reload_s=prof.wake_l2_s,
            ),
            awake=awake,
        )  # fmt: skip
        out.clients[name] = Replica(name, url, upstream, transport=transport)
        driver = VLLMSleepDriver(name, [out.clients[name]])
        out.residents.append(ExpertResidency(
            name=name, memory_gb=prof.memory_gb, device=DEVICE, driver=driver,
            sleep_level=pool.sleep_level,
        ))  # fmt: skip
    return out


async def send(
    sched: BenchPool, replicas: Replicas, trace: Sequence[TraceRequest]
) -> list[Outcome]:
    """Send every request of ``trace`` at its arrival time (open loop), each holding its
    expert through ``sched``; wait for all of them."""
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []

    async def one(req: TraceRequest) -> None:
        now = loop.time()
        out = Outcome(req.expert, now, sched.experts[req.expert].serving)
        outcomes.append(out)
        body = {
            "model": req.expert,
            "messages": [{"role": "user", "content": f"request {req.idx}"}],
            "max_tokens": req.tokens,
        }
        client = replicas.clients[req.expert].client
        try:
            async with sched.hold(req.expert):
                out.granted = loop.time()
                resp = await client.post("/v1/chat/completions", json=body)
            if resp.status_code != 200:
                out.error = f"HTTP {resp.status_code}"
            elif "garbage" in resp.json()["choices"][0]["message"]["content"]:
                out.error = "garbage"
            out.done = loop.time()
        except UpstreamError as exc:
            out.error = type(exc).__name__
            out.failed = loop.time()

    t0 = loop.time()
    tasks: list[asyncio.Task[None]] = []
    for req in trace:
        delay = t0 + req.t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(req)))
    await asyncio.gather(*tasks)
    return outcomes


def latency_metrics(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Completions, errors, throughput, latency and wait percentiles of one replay."""
    ok = [o for o in outcomes if not o.error and o.done is not None]
    latencies = [o.done - o.arrival for o in ok if o.done is not None]
    waits = [o.granted - o.arrival for o in ok if o.granted is not None]
    # The longest wait counts failed requests too (a 504 after the queue timeout).
    max_wait: dict[str, float] = {}
    for o in outcomes:
        if o.wait is not None:
            max_wait[o.expert] = max(max_wait.get(o.expert, 0.0), o.wait)
    first = min(o.arrival for o in outcomes)
    last = max((o.done for o in ok if o.done is not None), default=first)
    makespan = last - first
    errors = dict(Counter(o.error for o in outcomes if o.error))
    return {
        "requests": len(outcomes),
        "completed": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "makespan_s": round(makespan, 2),
        "throughput_rps": round(len(ok) / makespan, 4) if makespan > 0 else math.nan,
        "p50_s": round(percentile(latencies, 50), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "mean_wait_s": round(sum(waits) / len(waits), 3) if waits else math.nan,
        "p99_wait_s": round(percentile(waits, 99), 3),
        "max_wait_s": round(max(max_wait.values(), default=math.nan), 3),
        "max_wait_by_expert_s": {n: round(w, 3) for n, w in sorted(max_wait.items())},
    }


async def replay(
    policy: PolicySpec, pool: PoolSpec, trace: Sequence[TraceRequest], n_experts: int
) -> dict[str, Any]:
    """Run ``trace`` through a fresh pool under ``policy``; return its metrics."""
    slots = policy.slots(pool, n_experts)
    replicas = make_replicas(pool, n_experts, slots, awake=policy.all_awake)
    clock = asyncio.get_running_loop().time
    sched = await start_pool(policy, pool, replicas.residents, trace, clock)
    awake = sorted(n for n, e in sched.experts.items() if e.serving)
    wakes0 = sum(e.wakes for e in sched.experts.values())
    sleeps0 = sum(e.sleeps for e in sched.experts.values())
    outcomes = await send(sched, replicas, trace)
    await sched.aclose()
    await replicas.aclose()
    gpu = replicas.gpu
    return {
        "policy": policy.name,
        "scheduler": "collate" if policy.kind == "llama_swap" else policy.mode,
        "eviction": policy.eviction,
        "budget_experts": slots,
        **latency_metrics(outcomes),
        "awake_at_start": awake,
        "switches": sum(e.wakes for e in sched.experts.values()) - wakes0,
        "sleeps": sum(e.sleeps for e in sched.experts.values()) - sleeps0,
        "hot_hit_rate": round(sum(o.hot_on_arrival for o in outcomes) / len(outcomes), 4),
        "violations": len(gpu.violations),
        "garbage": replicas.fleet.garbage,
        "peak_gb": gpu.peak_gb.get(DEVICE, 0.0),
        "budget_gb": gpu.capacity_gb[DEVICE],
    }


async def run_all(
    pool: PoolSpec, spec: TraceSpec, policies: Sequence[PolicySpec]
) -> dict[str, dict[str, Any]]:
    """Replay the same trace under every policy, one after the other."""
    trace = make_trace(spec)
    return {p.name: await replay(p, pool, trace, spec.experts) for p in policies}


def run_virtual(
    pool: PoolSpec, spec: TraceSpec, policies: Sequence[PolicySpec]
) -> dict[str, dict[str, Any]]:
    """:func:`run_all` on a fresh virtual-time event loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(run_all(pool, spec, policies))


def run_trace_virtual(
    pool: PoolSpec,
    trace: Sequence[TraceRequest],
    n_experts: int,
    policies: Sequence[PolicySpec],
) -> dict[str, dict[str, Any]]:
    """Replay a given ``trace`` under every policy on a fresh virtual-time event loop."""

    async def run() -> dict[str, dict[str, Any]]:
        return {p.name: await replay(p, pool, trace, n_experts) for p in policies}

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(run())


def run_starvation(
    pool: PoolSpec, spec: StarvationSpec, policies: Sequence[PolicySpec]
) -> dict[str, dict[str, Any]]:
    """The starvation trace under every policy; each result gains ``cold_max_wait_s``."""
    if spec.hot != pool.budget_experts:
        raise ValueError("the starvation trace keeps every slot busy: hot must equal K")
    trace = make_starvation_trace(spec, pool.profile)
    results = run_trace_virtual(pool, trace, spec.experts, policies)
    for r in results.values():
        r["cold_max_wait_s"] = r["max_wait_by_expert_s"].get(spec.cold, math.nan)
    return results
