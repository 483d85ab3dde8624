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
  its budget (must stay 0). Generation (``/v1/chat/completions``) is modelled in
  :class:`~bench.tiering_replay.BenchFleet`: tokens x time per output token, at most
  ``max_num_seqs`` sequences per replica, each slowed by ``batch_slowdown`` per extra
  sequence in the batch (continuous batching is nearly free for decoding at small
  batches).
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

Values these sources do not give are marked *estimate* in
:data:`~bench.tiering_trace.PROFILES` with how they were derived. A level-1 sleep copies
the weights to CPU RAM; with ``mode=wait`` the GPU memory is free only once it returns,
and the scheduler counts the memory until then.
So, with the budget full, a switch costs sleep + wake before the new expert serves:
10.6 + 2.2 = 12.8 s for the 8B profile. Time per output token and memory per expert are
assumptions about an A100-80GB-class GPU, stated in :data:`~bench.tiering_trace.PROFILES`.

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
cold expert's wake (:func:`~bench.tiering_report.starvation_bound_s`).

Metrics per policy: throughput (completed requests / makespan, from the first arrival to
the last completion), p50/p99 end-to-end latency (queue + wake + generation), mean, p99
and maximum wait for the expert (queue + wake; the maximum also counts requests that
failed, until they failed), switches (wakes during the trace), sleeps,
hot-hit rate (requests whose expert was hot and serving on arrival), errors (a request
that waited ``--queue-timeout-s`` gets a 504 from the real gateway) and budget
violations (from FakeGPU; the run fails if any).

The pieces, one module each: ``bench/tiering_trace.py`` (profiles and traces),
``bench/tiering_policies.py`` (the policies, the pool they run with, building each
scheduler), ``bench/tiering_replay.py`` (fake replicas, one replay and its metrics),
``bench/tiering_report.py`` (checks and tables); this script is their command line.

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
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python bench/tiering.py``
    sys.path.insert(0, str(ROOT))

from bench.tiering_policies import EXTRA_POLICIES, POLICIES, PolicySpec, PoolSpec  # noqa: E402
from bench.tiering_replay import run_starvation, run_virtual  # noqa: E402
from bench.tiering_report import (  # noqa: E402
    STARVATION_COLUMNS,
    checks,
    starvation_checks,
    table,
)
from bench.tiering_trace import (  # noqa: E402
    PROFILES,
    Profile,
    StarvationSpec,
    TraceSpec,
    expert_names,
    make_trace,
    option_help,
    popularity,
)

#: The options that set a :class:`TraceSpec` or :class:`PoolSpec` field of the same name,
#: in ``--help`` order; each field's type, default and help (:class:`Help`) make its option.
SPEC_OPTIONS = (
    "experts", "budget_experts", "zipf", "requests", "rate", "seed", "session_mean",
    "think_s", "burst_factor", "median_tokens", "sleep_level", "max_wait_s", "recency_tau_s",
    "queue_timeout_s", "max_num_seqs", "batch_slowdown",
)  # fmt: skip
#: Options limited to a few values.
CHOICES: dict[str, tuple[int, ...]] = {"sleep_level": (1, 2)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    defaults = {**asdict(PoolSpec(PROFILES["8b"])), **asdict(TraceSpec())}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="8b",
        help="expert size and sleep/wake timings (default: 8b)",
    )
    helps = {**option_help(PoolSpec), **option_help(TraceSpec)}
    for name in SPEC_OPTIONS:
        default = defaults[name]
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                        choices=CHOICES.get(name), help=helps.get(name))  # fmt: skip
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


def specs(args: argparse.Namespace) -> tuple[TraceSpec, PoolSpec, list[PolicySpec]]:
    """The trace, the pool and the policies the options ask for."""

    def given(cls: type[Any]) -> dict[str, Any]:
        return {f.name: getattr(args, f.name) for f in fields(cls) if f.name in SPEC_OPTIONS}

    spec = TraceSpec(**given(TraceSpec))
    pool = PoolSpec(PROFILES[args.profile], **given(PoolSpec))
    wanted = args.policies.split(",")
    known = {p.name: p for p in POLICIES + EXTRA_POLICIES}
    unknown = set(wanted) - set(known)
    if unknown:
        raise SystemExit(f"unknown policies: {sorted(unknown)}")
    return spec, pool, [known[name] for name in wanted]


def check_clean(results: dict[str, dict[str, Any]], what: str = "") -> None:
    """Stop unless every replay kept the budget and served no garbage."""
    bad = {n: r["violations"] for n, r in results.items() if r["violations"] or r["garbage"]}
    if bad:
        raise SystemExit(f"{what}budget violated or garbage served: {bad}")


def print_header(spec: TraceSpec, pool: PoolSpec) -> None:
    """What the Zipf trace and the pool are."""
    profile: Profile = pool.profile
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


def starvation_section(
    pool: PoolSpec, sspec: StarvationSpec, policies: Sequence[PolicySpec]
) -> tuple[dict[str, Any], float]:
    """Replay the starvation trace, print its table; return its JSON part and runtime."""
    profile = pool.profile
    t_s = time.perf_counter()
    sresults = run_starvation(pool, sspec, policies)
    runtime = time.perf_counter() - t_s
    check_clean(sresults, "starvation trace: ")
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
    part = {
        "params": {**asdict(sspec), "cold": sspec.cold, "cold_at_s": sspec.cold_at_s,
                   "hot_tokens": sspec.hot_tokens(profile)},
        "policies": sresults,
        "checks": sch,
    }  # fmt: skip
    return part, runtime


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print the table (and JSON); return the JSON object."""
    args = parse_args(argv)
    spec, pool, policies = specs(args)

    t_real = time.perf_counter()
    results = run_virtual(pool, spec, policies)
    runtime = time.perf_counter() - t_real
    check_clean(results)

    print_header(spec, pool)
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
        starvation, s_runtime = starvation_section(pool, sspec, policies)
        runtime += s_runtime
    print(f"virtual time replayed in {runtime:.1f} s real")
    obj = {
        "params": {
            "profile": asdict(pool.profile), "trace": asdict(spec),
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
