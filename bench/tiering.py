"""Tiered expert pool under load: swap-on-demand FIFO vs LRU vs llama-swap vs ours vs all-awake.

Replays synthetic traces through the real pool code and compares scheduling and
eviction policies on them, in one run:

* **Real pool code**: :class:`~coe_router.experts.tiering.scheduler.TierScheduler` (acquire,
  release, wake, drain, evict) drives :class:`~coe_router.experts.tiering.drivers.
  VLLMSleepDriver`, which calls vLLM's sleep endpoints through each expert's
  :class:`~coe_router.experts.replica.Replica` (its own ``httpx.AsyncClient``). The
  replicas are ``tests/fake_sleep.py``'s fake vLLM servers behind one
  ``httpx.MockTransport`` (no sockets), which implement ``/sleep``, ``/wake_up``,
  ``/collective_rpc reload_weights`` and ``/is_sleeping`` as vLLM does, and a
  :class:`~tests.fake_sleep.FakeGPU` that records every moment a device held more than
  its budget (must stay 0). Generation (``/v1/chat/completions``) is modelled here
  (:class:`BenchFleet`): tokens x time per output token, at most ``max_num_seqs``
  sequences per replica, each slowed by ``batch_slowdown`` per extra sequence in the
  batch (continuous batching is nearly free for decoding at small batches).
* **Policies** (the same trace, the same seed, the same start state for each):

  ======== ============ ============ ===============================================
  name     scheduler    eviction     what it is
  ======== ============ ============ ===============================================
  fifo     ``fifo``     FIFOPolicy   swap on demand in arrival order, evict the
                                     expert loaded earliest (llama-swap before #790)
  lru      ``fifo``     LRUPolicy    the same, evict the least recently used
  llama_   collate      matrix       llama-swap's scheduler as of PR #790, ported in
  swap                  evict_costs  ``bench/collation.py`` (not the real pool code):
                                     a request for a loaded expert goes straight in,
                                     one for a loading expert joins its load, the rest
                                     queue in arrival order and start a swap once the
                                     expert it would evict is idle (ABCABC is served
                                     AABBCC); evict the cheapest by ``evict_costs``;
                                     no starvation bound
  ours     ``grouped``  ScorePolicy  wake the expert with the most waiters, admit
                                     its whole group, drain a busy expert only for
                                     a request waiting ``--max-wait-s``; evict by
                                     recency x frequency x wake cost
  all_awake ``grouped`` ScorePolicy  budget for all N experts: no switch at all
                                     (the upper bound)
  ======== ============ ============ ===============================================

* **Start state**: every expert was loaded once at start-up (woken from cold in catalog
  order through the pool, so all but the last K sleep at ``--sleep-level``); then the
  trace starts. Warm-up wakes are not counted. ``llama_swap`` is given the same start
  state (``CollationScheduler.preload``) and drives the same drivers, fake replicas and
  :class:`FakeGPU`, so its wakes and sleeps take the same time.
* **Virtual time**: the run happens on :class:`bench.virtual_time.VirtualTimeLoop`, an
  asyncio loop whose clock jumps to the next timer instead of waiting, so hours of trace
  replay in seconds. The scheduler gets ``clock=loop.time``; the fakes sleep with
  ``asyncio.sleep``; nothing waits on real I/O.

Wake and sleep times (``--profile``), from vLLM's published sleep-mode measurements:

* vLLM blog, "Zero-Reload Model Switching with vLLM Sleep Mode" (vLLM 0.11, A100,
  https://blog.vllm.ai/2025/10/26/sleep-mode.html): Qwen3-0.6B level-1 wake
  0.25-0.28 s, level-2 wake 0.78-0.91 s, cold start 36-39 s; Qwen3-Coder-30B-A3B
  level-1 wake about 2.9 s vs 47 s cold.
* A comment on vLLM PR #48337: Qwen3-8B level-1 sleep 10.6 s, level-1 wake 2.2 s,
  level-2 wake 6.5 s.

Values these sources do not give are marked *estimate* in :data:`PROFILES` with how they
were derived. A level-1 sleep copies the weights to CPU RAM; with ``mode=wait`` the GPU
memory is free only once it returns, and the scheduler counts the memory until then.
So, with the budget full, a switch costs sleep + wake before the new expert serves:
10.6 + 2.2 = 12.8 s for the 8B profile. Time per output token and memory per expert are
assumptions about an A100-80GB-class GPU, stated in :data:`PROFILES`.

Trace (``make_trace``): sessions (agentic / multi-turn traffic) arrive as a Poisson
process whose rate is Markov-modulated (calm periods, and bursts at ``--burst-factor``
times the rate); each session picks one expert from a Zipf(``--zipf``) popularity over a
seeded random order of the experts and sends a geometric number of requests (mean
``--session-mean``) separated by exponential think times (mean ``--think-s``). The
replay is open-loop: arrival times do not depend on the policy. Output lengths are
lognormal (median ``--median-tokens``, sigma 0.8, clipped to 16..2048).

Starvation trace (``make_starvation_trace``, replayed after the Zipf one unless
``--starvation-s 0``): each of the K experts awake at the start gets a request every
second for ``--starvation-s`` seconds, each generating for about three seconds, so
every slot always has requests in flight; the cold expert ``e0`` gets three requests
spread over that time. Pure collation never evicts a busy expert and lets every new
request for a loaded one in, so the cold requests wait until the hot traffic stops;
ours drains a busy expert once a request has waited ``--max-wait-s``, which bounds the
cold wait by ``max_wait_s`` + the drained expert's longest request + its sleep + the
cold expert's wake (:func:`starvation_bound_s`).

Metrics per policy: throughput (completed requests / makespan, from the first arrival to
the last completion), p50/p99 end-to-end latency (queue + wake + generation), mean, p99
and maximum wait for the expert (queue + wake; the maximum also counts requests that
failed, until they failed), switches (wakes during the trace), sleeps,
hot-hit rate (requests whose expert was hot and serving on arrival), errors (a request
that waited ``--queue-timeout-s`` gets a 504 from the real gateway) and budget
violations (from FakeGPU; the run fails if any).

Usage::

    python bench/tiering.py                      # N=8, K=2, Zipf(1.1), 8B profile
    python bench/tiering.py --profile small      # Qwen3-0.6B timings
    python bench/tiering.py --quick --json       # a smoke run; the last line is JSON
    python bench/tiering.py --policies llama_swap,llama_swap_pop,ours  # cost ablation

The last stdout line with ``--json`` is one object: ``{"params": {...}, "policies":
{"fifo": {...}, "lru": {...}, "llama_swap": {...}, "ours": {...}, "all_awake": {...}},
"checks": {...}, "starvation": {"params": {...}, "policies": {... each with
"cold_max_wait_s"}, "checks": {...}} (null with --starvation-s 0), "runtime_s": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python bench/tiering.py``
    sys.path.insert(0, str(ROOT))

from bench.collation import CollationScheduler, Matrix  # noqa: E402
from bench.virtual_time import VirtualTimeLoop  # noqa: E402
from coe_router.config import TierSettings, UpstreamSettings  # noqa: E402
from coe_router.errors import UpstreamError  # noqa: E402
from coe_router.experts.replica import Replica  # noqa: E402
from coe_router.experts.tiering.drivers import VLLMSleepDriver  # noqa: E402
from coe_router.experts.tiering.eviction import (  # noqa: E402
    EvictionPolicy,
    FIFOPolicy,
    LRUPolicy,
    ScorePolicy,
)
from coe_router.experts.tiering.scheduler import SchedulingMode, TierScheduler  # noqa: E402
from coe_router.experts.tiering.tiers import ExpertResidency  # noqa: E402
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica  # noqa: E402
from tests.fakes import completion  # noqa: E402
from tests.support import percentile  # noqa: E402

DEVICE = "gpu0"


# --- expert profiles ----------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Timings and size of one expert, as the fake replicas play them."""

    name: str
    model: str
    #: GPU memory one awake expert holds (weights + KV cache), GB: the budget unit.
    memory_gb: float
    #: Seconds a ``POST /sleep?level=N&mode=wait`` takes, by level.
    sleep_s: dict[int, float]
    #: Level-1 wake (weights back from CPU RAM).
    wake_l1_s: float
    #: Level-2 wake (weights reloaded from disk; ``reload_weights``).
    wake_l2_s: float
    #: Time per output token at batch size 1.
    tpot_s: float
    #: Where each number comes from.
    source: str


PROFILES: dict[str, Profile] = {
    "small": Profile(
        name="small",
        model="Qwen3-0.6B",
        memory_gb=10.0,
        sleep_s={1: 0.8, 2: 0.1},
        wake_l1_s=0.26,
        wake_l2_s=0.85,
        tpot_s=0.005,
        source=(
            "wake: vLLM blog 'Zero-Reload Model Switching with vLLM Sleep Mode' (A100, "
            "vLLM 0.11): level-1 0.25-0.28 s, level-2 0.78-0.91 s (midpoints used). "
            "Estimates: level-1 sleep 0.8 s = Qwen3-8B's 10.6 s scaled by weight size "
            "(1.2/16.4 GB); level-2 sleep 0.1 s (weights are discarded, not copied); "
            "5 ms/token; 10 GB with KV cache."
        ),
    ),
    "8b": Profile(
        name="8b",
        model="Qwen3-8B",
        memory_gb=36.0,
        sleep_s={1: 10.6, 2: 1.0},
        wake_l1_s=2.2,
        wake_l2_s=6.5,
        tpot_s=0.012,
        source=(
            "vLLM PR #48337 (comment): level-1 sleep 10.6 s, level-1 wake 2.2 s, "
            "level-2 wake 6.5 s. Estimates: level-2 sleep 1.0 s (weights are discarded, "
            "not copied); 12 ms/token; 36 GB with KV cache (two per 80 GB GPU)."
        ),
    ),
    "30b": Profile(
        name="30b",
        model="Qwen3-Coder-30B-A3B",
        memory_gb=75.0,
        sleep_s={1: 39.0, 2: 2.0},
        wake_l1_s=2.9,
        wake_l2_s=12.0,
        tpot_s=0.010,
        source=(
            "wake: vLLM blog 'Zero-Reload Model Switching with vLLM Sleep Mode': level-1 "
            "about 2.9 s (vs 47 s cold). Estimates: level-1 sleep 39 s = Qwen3-8B's "
            "10.6 s scaled by weight size (61/16.4 GB); level-2 wake 12 s (reload of "
            "61 GB from page cache at about 5 GB/s); level-2 sleep 2 s; 10 ms/token "
            "(3B active); 75 GB with KV cache (one per 80 GB GPU)."
        ),
    ),
}


# --- the trace ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    """One request of the trace."""

    idx: int
    #: Arrival, seconds after the trace starts.
    t: float
    expert: str
    tokens: int
    session: int


@dataclass(frozen=True)
class TraceSpec:
    """Parameters of the synthetic trace."""

    requests: int = 2000
    experts: int = 8
    zipf: float = 1.1
    #: Mean arrival rate over the trace, requests per second.
    rate: float = 0.5
    seed: int = 0
    session_mean: float = 3.0
    think_s: float = 4.0
    burst_factor: float = 4.0
    calm_s: float = 120.0
    burst_s: float = 20.0
    median_tokens: int = 200


def expert_names(n: int) -> list[str]:
    """``e0`` .. ``e{n-1}``: the catalog order."""
    return [f"e{i}" for i in range(n)]


def popularity(spec: TraceSpec) -> dict[str, float]:
    """Zipf(``spec.zipf``) probability of each expert, over a seeded random order."""
    names = expert_names(spec.experts)
    order = names[:]
    random.Random(spec.seed).shuffle(order)
    weights = [1.0 / (k**spec.zipf) for k in range(1, spec.experts + 1)]
    total = sum(weights)
    probs = {name: w / total for name, w in zip(order, weights, strict=True)}
    return {name: probs[name] for name in names}


def make_trace(spec: TraceSpec) -> list[TraceRequest]:
    """Sessions on a Markov-modulated Poisson process, Zipf expert per session."""
    rng = random.Random(spec.seed + 1)
    pop = popularity(spec)
    names, probs = list(pop), list(pop.values())
    # Mean rate multiplier of the two-state modulation; sessions carry session_mean requests.
    mean_mult = (spec.calm_s + spec.burst_factor * spec.burst_s) / (spec.calm_s + spec.burst_s)
    session_rate = spec.rate / spec.session_mean / mean_mult
    p_more = 1.0 - 1.0 / spec.session_mean  # geometric session length, mean session_mean
    times: list[tuple[float, str, int]] = []
    pending: list[float] = []  # arrival times not yet passed by the session clock (a heap)
    passed = 0
    t, bursting = 0.0, False
    state_end = rng.expovariate(1.0 / spec.calm_s)
    session = 0
    while True:
        rate = session_rate * (spec.burst_factor if bursting else 1.0)
        t_next = t + rng.expovariate(rate)
        if t_next > state_end:  # the state changes first (memoryless: redraw from there)
            t = state_end
            bursting = not bursting
            state_end = t + rng.expovariate(1.0 / (spec.burst_s if bursting else spec.calm_s))
            continue
        t = t_next
        # Requests before t are all known (sessions start in order): stop once they cover n.
        while pending and pending[0] <= t:
            heapq.heappop(pending)
            passed += 1
        if passed >= spec.requests:
            break
        expert = rng.choices(names, probs)[0]
        at = t
        while True:
            times.append((at, expert, session))
            heapq.heappush(pending, at)
            if rng.random() >= p_more:
                break
            at += rng.expovariate(1.0 / spec.think_s)
        session += 1
    times.sort()
    sigma = 0.8
    out = []
    for idx, (at, expert, sess) in enumerate(times[: spec.requests]):
        tokens = int(min(2048, max(16, rng.lognormvariate(math.log(spec.median_tokens), sigma))))
        out.append(TraceRequest(idx, at, expert, tokens, sess))
    return out


@dataclass(frozen=True)
class StarvationSpec:
    """A trace where pure collation starves a cold expert.

    Each of the ``hot`` experts resident at the start (the last ``hot`` of the catalog;
    with ``hot`` = K every slot is taken) gets one request every ``period_s`` for
    ``duration_s``, each generating for about ``busy_factor`` periods, so it always has
    requests in flight; the cold expert (``e0``, asleep) gets one rare request at each
    of ``cold_at_s``. A scheduler that never drains a busy expert serves the cold
    requests only once the hot traffic stops.
    """

    experts: int = 8
    hot: int = 2
    period_s: float = 1.0
    busy_factor: float = 3.0
    duration_s: float = 480.0
    #: Spread evenly: the i-th arrives at ``duration_s * (2i + 1) / (2 * cold_requests)``.
    cold_requests: int = 3
    cold_tokens: int = 200

    @property
    def cold(self) -> str:
        """The cold expert's name."""
        return expert_names(self.experts)[0]

    @property
    def cold_at_s(self) -> list[float]:
        """Arrival times of the cold requests."""
        n = self.cold_requests
        return [self.duration_s * (2 * i + 1) / (2 * n) for i in range(n)]

    def hot_tokens(self, profile: Profile) -> int:
        """Output tokens of a hot request: about ``busy_factor`` periods of generation."""
        return math.ceil(self.busy_factor * self.period_s / profile.tpot_s)


def make_starvation_trace(spec: StarvationSpec, profile: Profile) -> list[TraceRequest]:
    """The hot streams (phases staggered) and the cold requests, in arrival order."""
    names = expert_names(spec.experts)
    hot_tokens = spec.hot_tokens(profile)
    times: list[tuple[float, str, int, int]] = []
    for j, name in enumerate(names[-spec.hot :]):
        phase = spec.period_s * j / spec.hot
        for k in range(int(spec.duration_s / spec.period_s)):
            times.append((phase + k * spec.period_s, name, hot_tokens, j))
    times += [(t, spec.cold, spec.cold_tokens, spec.hot) for t in spec.cold_at_s]
    times.sort()
    return [TraceRequest(i, t, e, tok, sess) for i, (t, e, tok, sess) in enumerate(times)]


# --- fake replicas that generate ----------------------------------------------------------


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


# --- policies and one replay ----------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """One column of the comparison."""

    name: str
    mode: SchedulingMode
    eviction: str
    all_awake: bool = False
    description: str = ""
    #: ``pool``: the real :class:`TierScheduler`; ``llama_swap``: the port in
    #: ``bench/collation.py`` (``mode`` and ``eviction`` then only label the row).
    kind: Literal["pool", "llama_swap"] = "pool"
    #: llama_swap only: ``evict_costs`` from the wake time (equal for identical experts)
    #: or from each expert's share of the trace (an oracle a user could approximate).
    evict_costs: Literal["wake", "trace_share"] = "wake"


POLICIES: list[PolicySpec] = [
    PolicySpec("fifo", "fifo", "fifo", description="swap on demand, arrival order, "
               "evict earliest loaded (llama-swap before its PR #790)"),
    PolicySpec("lru", "fifo", "lru", description="swap on demand, arrival order, evict LRU"),
    PolicySpec("llama_swap", "fifo", "matrix", kind="llama_swap",
               description="llama-swap's scheduler: collate by model, oldest group first, "
               "no starvation bound, evict by evict_costs (bench/collation.py)"),
    PolicySpec("ours", "grouped", "score", description="grouped wakes + score eviction"),
    PolicySpec("all_awake", "grouped", "score", all_awake=True,
               description="budget for all experts (upper bound)"),
]  # fmt: skip

#: Ablations, only with ``--policies``: which half of "ours" (grouping or eviction) helps.
EXTRA_POLICIES: list[PolicySpec] = [
    PolicySpec("grouped_lru", "grouped", "lru", description="grouped wakes + LRU eviction"),
    PolicySpec("grouped_fifo", "grouped", "fifo", description="grouped wakes + FIFO eviction"),
    PolicySpec("fifo_score", "fifo", "score", description="arrival order + score eviction"),
    PolicySpec("llama_swap_pop", "fifo", "matrix", kind="llama_swap", evict_costs="trace_share",
               description="llama_swap with evict_costs from each expert's share of the "
               "trace (an oracle)"),
]  # fmt: skip


@dataclass(frozen=True)
class PoolSpec:
    """What the pool runs with: sizes, budget and scheduler knobs."""

    profile: Profile
    budget_experts: int = 2
    sleep_level: int = 1
    max_wait_s: float = TierSettings().max_wait_s
    queue_timeout_s: float = TierSettings().queue_timeout_s
    recency_tau_s: float = TierSettings().recency_tau_s
    max_num_seqs: int = 16
    batch_slowdown: float = 0.03


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


class BenchPool(Protocol):
    """What a replay needs of a scheduler: the real pool, or the llama-swap port."""

    experts: dict[str, ExpertResidency]

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Keep ``name`` serving for one request (waiting for it as the policy decides)."""
        ...

    async def aclose(self) -> None:
        """Stop what runs and fail whoever still waits."""
        ...


def make_policy(name: str, recency_tau_s: float) -> EvictionPolicy:
    """The eviction policy called ``name``."""
    if name == "fifo":
        return FIFOPolicy()
    if name == "lru":
        return LRUPolicy()
    if name == "score":
        return ScorePolicy(recency_tau_s)
    raise ValueError(f"unknown eviction policy {name!r}")


async def replay(
    policy: PolicySpec, pool: PoolSpec, trace: Sequence[TraceRequest], n_experts: int
) -> dict[str, Any]:
    """Run ``trace`` through a fresh pool under ``policy``; return its metrics."""
    loop = asyncio.get_running_loop()
    prof = pool.profile
    names = expert_names(n_experts)
    slots = n_experts if policy.all_awake else pool.budget_experts
    budget = slots * prof.memory_gb
    gpu = FakeGPU({DEVICE: budget})
    fleet = BenchFleet(
        gpu, tpot_s=prof.tpot_s, batch_slowdown=pool.batch_slowdown,
        max_num_seqs=pool.max_num_seqs,
    )  # fmt: skip
    transport = fleet.transport()
    upstream = UpstreamSettings(read_timeout_s=3600.0)
    replicas: dict[str, Replica] = {}
    residents = []
    for name in names:
        url = fleet.add(
            SleepReplica(
                name, prof.memory_gb, DEVICE, sleep_s=dict(prof.sleep_s),
                wake_s=prof.wake_l1_s, reload_s=prof.wake_l2_s,
            ),
            awake=policy.all_awake,
        )  # fmt: skip
        replicas[name] = Replica(name, url, upstream, transport=transport)
        driver = VLLMSleepDriver(name, [replicas[name]])
        residents.append(ExpertResidency(
            name=name, memory_gb=prof.memory_gb, device=DEVICE, driver=driver,
            sleep_level=pool.sleep_level,
        ))  # fmt: skip
    sched: BenchPool
    if policy.kind == "llama_swap":
        if policy.evict_costs == "trace_share":
            costs = {n: max(1, round(1000 * sum(r.expert == n for r in trace) / len(trace)))
                     for n in names}  # fmt: skip
        else:  # the wake time from the eviction tier, in whole seconds (equal here)
            wake_s = prof.wake_l1_s if pool.sleep_level == 1 else prof.wake_l2_s
            costs = {n: max(1, math.ceil(wake_s)) for n in names}
        matrix = Matrix.any_k_of(names, slots, costs)
        swap = CollationScheduler(
            residents, matrix, queue_timeout_s=pool.queue_timeout_s, clock=loop.time
        )
        await swap.start()
        if not policy.all_awake:
            await swap.preload(names, slots)  # the same start state as below
        sched = swap
    else:
        tiers = TierScheduler(
            residents, {DEVICE: budget}, make_policy(policy.eviction, pool.recency_tau_s),
            mode=policy.mode, max_wait_s=pool.max_wait_s, queue_timeout_s=pool.queue_timeout_s,
            clock=loop.time,
        )  # fmt: skip
        await tiers.start()
        if not policy.all_awake:
            # Start-up: load every expert once (catalog order); all but the last K sleep.
            for name in names:
                await tiers.wake(name)
        sched = tiers
    if not policy.all_awake:
        # The last evictions finish within one sleep time (virtual time: free to wait).
        await asyncio.sleep(max(prof.sleep_s.values()) + 1.0)
        if any(e.transition is not None for e in sched.experts.values()):
            raise RuntimeError("warm-up: a sleep or wake is still running")
    awake = sorted(n for n, e in sched.experts.items() if e.serving)
    wakes0 = sum(e.wakes for e in sched.experts.values())
    sleeps0 = sum(e.sleeps for e in sched.experts.values())

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
        try:
            async with sched.hold(req.expert):
                out.granted = loop.time()
                resp = await replicas[req.expert].client.post("/v1/chat/completions", json=body)
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
    await sched.aclose()
    for r in replicas.values():
        await r.aclose()

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
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error:
            errors[o.error] = errors.get(o.error, 0) + 1
    return {
        "policy": policy.name,
        "scheduler": "collate" if policy.kind == "llama_swap" else policy.mode,
        "eviction": policy.eviction,
        "budget_experts": slots,
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
        "awake_at_start": awake,
        "switches": sum(e.wakes for e in sched.experts.values()) - wakes0,
        "sleeps": sum(e.sleeps for e in sched.experts.values()) - sleeps0,
        "hot_hit_rate": round(sum(o.hot_on_arrival for o in outcomes) / len(outcomes), 4),
        "violations": len(gpu.violations),
        "garbage": fleet.garbage,
        "peak_gb": gpu.peak_gb.get(DEVICE, 0.0),
        "budget_gb": budget,
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


# --- reporting ------------------------------------------------------------------------------


def checks(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The claims: ours vs FIFO, LRU and llama-swap, and vs the all-awake bound."""
    ours = results.get("ours")
    if ours is None:
        return {}
    out: dict[str, Any] = {}
    for base in ("fifo", "lru"):
        if base in results:
            out[f"fewer_switches_than_{base}"] = ours["switches"] < results[base]["switches"]
            out[f"lower_p99_than_{base}"] = ours["p99_s"] < results[base]["p99_s"]
    for base in ("llama_swap", "llama_swap_pop"):
        if base in results:
            other = results[base]
            out[f"lower_p99_than_{base}"] = ours["p99_s"] < other["p99_s"]
            out[f"lower_max_wait_than_{base}"] = ours["max_wait_s"] < other["max_wait_s"]
            ratio = ours["throughput_rps"] / other["throughput_rps"]
            out[f"throughput_vs_{base}"] = round(ratio, 4)
            # "At the same throughput": the same trace, and ours completes it no slower.
            out[f"throughput_not_below_{base}"] = ratio >= 0.99
    if "all_awake" in results:
        ratio = ours["throughput_rps"] / results["all_awake"]["throughput_rps"]
        out["throughput_vs_all_awake"] = round(ratio, 4)
        out["throughput_within_20pct"] = ratio >= 0.8
    out["no_violations"] = all(r["violations"] == 0 for r in results.values())
    return out


def starvation_bound_s(pool: PoolSpec, spec: StarvationSpec) -> float:
    """Longest the cold request may wait under ours: ``max_wait_s``, then the drained
    expert's longest request (a full batch), its sleep and the cold expert's wake."""
    prof = pool.profile
    longest = spec.hot_tokens(prof) * prof.tpot_s * (1 + pool.batch_slowdown * pool.max_num_seqs)
    wake = prof.wake_l1_s if pool.sleep_level == 1 else prof.wake_l2_s
    return pool.max_wait_s + longest + prof.sleep_s[pool.sleep_level] + wake


def starvation_checks(
    results: dict[str, dict[str, Any]], pool: PoolSpec, spec: StarvationSpec
) -> dict[str, Any]:
    """Ours bounds the cold request's wait; pure collation makes it wait out the hot stream."""
    out: dict[str, Any] = {"bound_s": round(starvation_bound_s(pool, spec), 2)}
    if "ours" in results:
        out["ours_cold_wait_bounded"] = results["ours"]["cold_max_wait_s"] <= out["bound_s"]
    # The first cold request arrives with the hot streams still running; starving it means
    # waiting until their last request has arrived.
    hot_left = (spec.duration_s - spec.period_s) - spec.cold_at_s[0]
    for base in ("llama_swap", "llama_swap_pop"):
        if base in results:
            out[f"{base}_cold_waits_out_the_hot_stream"] = (
                results[base]["cold_max_wait_s"] >= hot_left
            )
    out["no_violations"] = all(r["violations"] == 0 for r in results.values())
    return out


#: (header, result key, format) of the table's columns.
Column = tuple[str, str, str]

COLUMNS: list[Column] = [
    ("policy", "policy", "{}"), ("K", "budget_experts", "{}"),
    ("done", "completed", "{}"), ("err", "errors", "{}"),
    ("thru r/s", "throughput_rps", "{:.3f}"), ("p50 s", "p50_s", "{:.2f}"),
    ("p99 s", "p99_s", "{:.2f}"), ("wait s", "mean_wait_s", "{:.2f}"),
    ("max wait s", "max_wait_s", "{:.1f}"),
    ("switches", "switches", "{}"), ("hot-hit", "hot_hit_rate", "{:.1%}"),
    ("viol", "violations", "{}"),
]  # fmt: skip

STARVATION_COLUMNS: list[Column] = [
    ("policy", "policy", "{}"), ("done", "completed", "{}"), ("err", "errors", "{}"),
    ("thru r/s", "throughput_rps", "{:.3f}"), ("p50 s", "p50_s", "{:.2f}"),
    ("p99 s", "p99_s", "{:.2f}"), ("max wait s", "max_wait_s", "{:.1f}"),
    ("cold max wait s", "cold_max_wait_s", "{:.1f}"), ("switches", "switches", "{}"),
    ("viol", "violations", "{}"),
]  # fmt: skip


def table(results: dict[str, dict[str, Any]], cols: Sequence[Column] = COLUMNS) -> str:
    """The human-readable comparison."""
    rows = [[h for h, _, _ in cols]]
    for r in results.values():
        rows.append([fmt.format(r[key]) for _, key, fmt in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    d, pd = TraceSpec(), PoolSpec(PROFILES["8b"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="8b",
        help="expert size and sleep/wake timings (default: 8b)",
    )
    ap.add_argument("--experts", type=int, default=d.experts, help="N experts")
    ap.add_argument(
        "--budget-experts",
        type=int,
        default=pd.budget_experts,
        help="K: the GPU budget, in experts (K < N)",
    )
    ap.add_argument("--zipf", type=float, default=d.zipf, help="Zipf exponent of popularity")
    ap.add_argument("--requests", type=int, default=d.requests)
    ap.add_argument("--rate", type=float, default=d.rate, help="mean arrivals per second")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--session-mean",
        type=float,
        default=d.session_mean,
        help="mean requests per session (same expert)",
    )
    ap.add_argument(
        "--think-s", type=float, default=d.think_s, help="mean gap between a session's requests"
    )
    ap.add_argument(
        "--burst-factor",
        type=float,
        default=d.burst_factor,
        help="arrival rate multiplier during bursts",
    )
    ap.add_argument("--median-tokens", type=int, default=d.median_tokens)
    ap.add_argument(
        "--sleep-level",
        type=int,
        choices=(1, 2),
        default=pd.sleep_level,
        help="level evicted experts sleep at",
    )
    ap.add_argument(
        "--max-wait-s",
        type=float,
        default=pd.max_wait_s,
        help="scheduler starvation bound (COE_TIERS__MAX_WAIT_S)",
    )
    ap.add_argument(
        "--recency-tau-s",
        type=float,
        default=pd.recency_tau_s,
        help="score policy recency constant (COE_TIERS__RECENCY_TAU_S)",
    )
    ap.add_argument(
        "--queue-timeout-s",
        type=float,
        default=pd.queue_timeout_s,
        help="a request waiting longer for its expert fails (504)",
    )
    ap.add_argument(
        "--max-num-seqs", type=int, default=pd.max_num_seqs, help="concurrent sequences per replica"
    )
    ap.add_argument(
        "--batch-slowdown",
        type=float,
        default=pd.batch_slowdown,
        help="per-token slowdown per extra sequence in the batch",
    )
    ap.add_argument(
        "--policies",
        default=",".join(p.name for p in POLICIES),
        help="comma-separated, of " + ",".join(p.name for p in POLICIES + EXTRA_POLICIES),
    )
    ap.add_argument(
        "--starvation-s",
        type=float,
        default=StarvationSpec().duration_s,
        help="length of the starvation trace's hot streams (0: skip that trace)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run (200 requests, 120 s starvation trace)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object as last line")
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if args.quick and "--requests" not in given:
        args.requests = 200
    if args.quick and "--starvation-s" not in given:
        args.starvation_s = 120.0
    if not 0 < args.budget_experts < args.experts:
        ap.error("need 0 < --budget-experts < --experts")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print the table (and JSON); return the JSON object."""
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    spec = TraceSpec(
        requests=args.requests, experts=args.experts, zipf=args.zipf, rate=args.rate,
        seed=args.seed, session_mean=args.session_mean, think_s=args.think_s,
        burst_factor=args.burst_factor, median_tokens=args.median_tokens,
    )  # fmt: skip
    pool = PoolSpec(
        profile, budget_experts=args.budget_experts, sleep_level=args.sleep_level,
        max_wait_s=args.max_wait_s, queue_timeout_s=args.queue_timeout_s,
        recency_tau_s=args.recency_tau_s, max_num_seqs=args.max_num_seqs,
        batch_slowdown=args.batch_slowdown,
    )  # fmt: skip
    wanted = args.policies.split(",")
    known = {p.name: p for p in POLICIES + EXTRA_POLICIES}
    unknown = set(wanted) - set(known)
    if unknown:
        raise SystemExit(f"unknown policies: {sorted(unknown)}")
    policies = [known[name] for name in wanted]

    t_real = time.perf_counter()
    results = run_virtual(pool, spec, policies)
    runtime = time.perf_counter() - t_real
    bad = {n: r["violations"] for n, r in results.items() if r["violations"] or r["garbage"]}
    if bad:
        raise SystemExit(f"budget violated or garbage served: {bad}")

    pop = popularity(spec)
    trace = make_trace(spec)
    span = trace[-1].t - trace[0].t if trace else 0.0
    print(
        f"tiering bench: N={spec.experts} experts, budget K={pool.budget_experts} "
        f"(x {profile.memory_gb:.0f} GB = {pool.budget_experts * profile.memory_gb:.0f} GB), "
        f"Zipf({spec.zipf}), {len(trace)} requests over {span:.0f} s "
        f"(mean {spec.rate} req/s, bursts x{spec.burst_factor}), seed {spec.seed}"
    )
    print(
        f"profile {profile.name} ({profile.model}): sleep L1 {profile.sleep_s[1]} s, "
        f"wake L1 {profile.wake_l1_s} s, wake L2 {profile.wake_l2_s} s, "
        f"{profile.tpot_s * 1000:.0f} ms/token; evict to level {pool.sleep_level}; "
        f"max_wait_s {pool.max_wait_s}"
    )
    print("popularity: " + ", ".join(f"{n} {p:.1%}" for n, p in
                                     sorted(pop.items(), key=lambda x: -x[1])))  # fmt: skip
    print()
    print(table(results))
    ch = checks(results)
    print(
        "(latency and throughput count completed requests; err: failed, e.g. a 504 after "
        f"waiting {pool.queue_timeout_s:.0f} s for the expert)"
    )
    print()
    print("checks: " + ", ".join(f"{k}={v}" for k, v in ch.items()))

    starvation: dict[str, Any] | None = None
    if args.starvation_s > 0:
        sspec = StarvationSpec(
            experts=spec.experts, hot=pool.budget_experts, duration_s=args.starvation_s
        )
        t_s = time.perf_counter()
        sresults = run_starvation(pool, sspec, policies)
        runtime += time.perf_counter() - t_s
        bad = {n: r["violations"] for n, r in sresults.items() if r["violations"] or r["garbage"]}
        if bad:
            raise SystemExit(f"starvation trace: budget violated or garbage served: {bad}")
        sch = starvation_checks(sresults, pool, sspec)
        hot = expert_names(sspec.experts)[-sspec.hot :]
        print()
        print(
            f"starvation trace: {', '.join(hot)} (hot, one per slot) each get a request every "
            f"{sspec.period_s:g} s for {sspec.duration_s:.0f} s ({sspec.hot_tokens(profile)} "
            f"tokens, always in flight); cold {sspec.cold} gets {sspec.cold_requests} at "
            + ", ".join(f"{t:.0f}" for t in sspec.cold_at_s)
            + " s"
        )
        print()
        print(table(sresults, STARVATION_COLUMNS))
        print(
            f"(cold max wait: longest wait of a request for {sspec.cold}; ours is bounded by "
            f"max_wait_s + drain + sleep + wake = {sch['bound_s']:.1f} s)"
        )
        print()
        print("checks: " + ", ".join(f"{k}={v}" for k, v in sch.items()))
        starvation = {
            "params": {**asdict(sspec), "cold": sspec.cold, "cold_at_s": sspec.cold_at_s,
                       "hot_tokens": sspec.hot_tokens(profile)},
            "policies": sresults,
            "checks": sch,
        }  # fmt: skip
    print(f"virtual time replayed in {runtime:.1f} s real")
    obj = {
        "params": {
            "profile": asdict(profile), "trace": asdict(spec),
            "pool": {k: v for k, v in asdict(pool).items() if k != "profile"},
            "policies": {p.name: p.description for p in policies},
        },
        "policies": results,
        "checks": ch,
        "starvation": starvation,
        "runtime_s": round(runtime, 2),
    }  # fmt: skip
    if args.json:
        print(json.dumps(obj, sort_keys=False))
    return obj


if __name__ == "__main__":
    main()
