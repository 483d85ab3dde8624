"""The tiering bench's policies: the columns of the comparison, the pool they run with,
and how each one's scheduler is built and brought to the common start state.

A policy is either the real pool code (:class:`~coe_router.experts.tiering.scheduler.
TierScheduler` with one of :data:`~coe_router.experts.tiering.eviction.EVICTION_POLICIES`)
or llama-swap's collating scheduler as ported in ``bench/collation.py``; both offer what a
replay needs (:class:`BenchPool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from bench.collation import CollationScheduler, Matrix
from bench.tiering_trace import Help, Profile, TraceRequest
from coe_router.config import TierSettings
from coe_router.experts.tiering.eviction import EVICTION_POLICIES
from coe_router.experts.tiering.scheduler import SchedulingMode, TierScheduler
from coe_router.experts.tiering.tiers import ExpertResidency

#: The one (fake) GPU every expert of a replay shares.
DEVICE = "gpu0"


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

    def slots(self, pool: PoolSpec, n_experts: int) -> int:
        """How many experts fit the GPU budget: K, or all of them for ``all_awake``."""
        return n_experts if self.all_awake else pool.budget_experts


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
    budget_experts: Annotated[int, Help("K: the GPU budget, in experts (K < N)")] = 2
    sleep_level: Annotated[int, Help("level evicted experts sleep at")] = 1
    max_wait_s: Annotated[float, Help("scheduler starvation bound (COE_TIERS__MAX_WAIT_S)")] = (
        TierSettings().max_wait_s
    )
    queue_timeout_s: Annotated[
        float, Help("a request waiting longer for its expert fails (504)")
    ] = TierSettings().queue_timeout_s
    recency_tau_s: Annotated[
        float, Help("score policy recency constant (COE_TIERS__RECENCY_TAU_S)")
    ] = TierSettings().recency_tau_s
    max_num_seqs: Annotated[int, Help("concurrent sequences per replica")] = 16
    batch_slowdown: Annotated[float, Help("per-token slowdown per extra sequence in the batch")] = (
        0.03
    )


class BenchPool(Protocol):
    """What a replay needs of a scheduler: the real pool, or the llama-swap port."""

    experts: dict[str, ExpertResidency]

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Keep ``name`` serving for one request (waiting for it as the policy decides)."""
        ...

    async def aclose(self) -> None:
        """Stop what runs and fail whoever still waits."""
        ...


async def start_pool(
    policy: PolicySpec,
    pool: PoolSpec,
    residents: Sequence[ExpertResidency],
    trace: Sequence[TraceRequest],
    clock: Callable[[], float],
) -> BenchPool:
    """``policy``'s scheduler over ``residents``, in the start state every policy shares:
    each expert loaded once in catalog order, all but the last K asleep (or all awake for
    ``all_awake``)."""
    prof = pool.profile
    names = [e.name for e in residents]
    slots = policy.slots(pool, len(names))
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
            residents, matrix, queue_timeout_s=pool.queue_timeout_s, clock=clock
        )
        await swap.start()
        if not policy.all_awake:
            await swap.preload(names, slots)  # the same start state as below
        sched = swap
    else:
        tiers = TierScheduler(
            residents, {DEVICE: slots * prof.memory_gb},
            EVICTION_POLICIES[policy.eviction](pool.recency_tau_s),
            mode=policy.mode, max_wait_s=pool.max_wait_s, queue_timeout_s=pool.queue_timeout_s,
            clock=clock,
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
    return sched
