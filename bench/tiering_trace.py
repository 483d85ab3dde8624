"""The tiering bench's workload: expert profiles (sizes, sleep and wake timings, with
their sources) and the synthetic traces replayed through every policy.

* :data:`PROFILES`: what one expert weighs and how long it takes to sleep and wake, from
  vLLM's published sleep-mode measurements; values they do not give are marked
  *estimate* with how they were derived.
* :func:`make_trace`: sessions on a Markov-modulated Poisson process, each on one expert
  drawn from a Zipf popularity (see ``bench/tiering.py``'s docstring).
* :func:`make_starvation_trace`: hot streams that keep every slot busy, and a few
  requests for a cold expert.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, fields
from typing import Annotated, Any, get_args, get_origin, get_type_hints


@dataclass(frozen=True)
class Help:
    """The command-line help of a spec's field: ``x: Annotated[int, Help("...")] = 1``
    makes ``bench/tiering.py`` offer ``--x`` (with the field's type and default)."""

    text: str


def option_help(spec: type[Any]) -> dict[str, str]:
    """The :class:`Help` of each field of the dataclass ``spec`` that has one."""
    hints = get_type_hints(spec, include_extras=True)
    out: dict[str, str] = {}
    for f in fields(spec):
        hint = hints[f.name]
        if get_origin(hint) is Annotated:
            out.update((f.name, m.text) for m in get_args(hint)[1:] if isinstance(m, Help))
    return out


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


def _one_line(text: str) -> str:
    """``text`` with its wrapping undone: the sources below are written as wrapped prose."""
    return " ".join(text.split())


PROFILES: dict[str, Profile] = {
    "small": Profile(
        "small", "Qwen3-0.6B", memory_gb=10.0, sleep_s={1: 0.8, 2: 0.1},
        wake_l1_s=0.26, wake_l2_s=0.85, tpot_s=0.005,
        source=_one_line("""
            wake: vLLM blog 'Zero-Reload Model Switching with vLLM Sleep Mode' (A100,
            vLLM 0.11): level-1 0.25-0.28 s, level-2 0.78-0.91 s (midpoints used).
            Estimates: level-1 sleep 0.8 s = Qwen3-8B's 10.6 s scaled by weight size
            (1.2/16.4 GB); level-2 sleep 0.1 s (weights are discarded, not copied);
            5 ms/token; 10 GB with KV cache.
        """),
    ),
    "8b": Profile(
        "8b", "Qwen3-8B", memory_gb=36.0, sleep_s={1: 10.6, 2: 1.0},
        wake_l1_s=2.2, wake_l2_s=6.5, tpot_s=0.012,
        source=_one_line("""
            vLLM PR #48337 (comment): level-1 sleep 10.6 s, level-1 wake 2.2 s,
            level-2 wake 6.5 s. Estimates: level-2 sleep 1.0 s (weights are discarded,
            not copied); 12 ms/token; 36 GB with KV cache (two per 80 GB GPU).
        """),
    ),
    "30b": Profile(
        "30b", "Qwen3-Coder-30B-A3B", memory_gb=75.0, sleep_s={1: 39.0, 2: 2.0},
        wake_l1_s=2.9, wake_l2_s=12.0, tpot_s=0.010,
        source=_one_line("""
            wake: vLLM blog 'Zero-Reload Model Switching with vLLM Sleep Mode': level-1
            about 2.9 s (vs 47 s cold). Estimates: level-1 sleep 39 s = Qwen3-8B's
            10.6 s scaled by weight size (61/16.4 GB); level-2 wake 12 s (reload of
            61 GB from page cache at about 5 GB/s); level-2 sleep 2 s; 10 ms/token
            (3B active); 75 GB with KV cache (one per 80 GB GPU).
        """),
    ),
}  # fmt: skip


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

    #: Requests in the trace (it ends once that many have arrived).
    requests: int = 2000
    experts: Annotated[int, Help("N experts")] = 8
    zipf: Annotated[float, Help("Zipf exponent of popularity")] = 1.1
    #: Mean arrival rate over the trace, requests per second.
    rate: Annotated[float, Help("mean arrivals per second")] = 0.5
    #: Seeds the popularity order and every draw of the trace.
    seed: int = 0
    #: Geometric, all for the session's expert.
    session_mean: Annotated[float, Help("mean requests per session (same expert)")] = 3.0
    #: Exponential, seconds.
    think_s: Annotated[float, Help("mean gap between a session's requests")] = 4.0
    burst_factor: Annotated[float, Help("arrival rate multiplier during bursts")] = 4.0
    #: Mean lengths of a calm period and of a burst (exponential), seconds.
    calm_s: float = 120.0
    burst_s: float = 20.0
    #: Median output tokens (lognormal, sigma 0.8, clipped to 16..2048).
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
