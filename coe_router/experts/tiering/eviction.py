"""Eviction policies: which awake expert to put to sleep when another must wake.

A policy scores each evictable expert; the lowest score sleeps first. Pinned
experts are never offered. Policies register by name in :data:`EVICTION_POLICIES`.
"""

from __future__ import annotations

import math
from typing import Protocol

from coe_router.experts.tiering.tiers import ExpertResidency


class EvictionPolicy(Protocol):
    """Ranks awake experts; the lowest ``keep_score`` is evicted first.

    Every policy is built the same way, ``cls(recency_tau_s=...)``, whether it uses the
    parameter or not, so the pool and the benchmarks construct any of them by name.
    """

    def __init__(self, recency_tau_s: float = 30.0) -> None: ...

    def keep_score(self, expert: ExpertResidency, now: float) -> float:
        """How much keeping ``expert`` awake is worth now."""
        ...


class _Policy:
    """The shared constructor."""

    def __init__(self, recency_tau_s: float = 30.0) -> None:
        #: Time constant of recency decay (only :class:`ScorePolicy` weighs it).
        self.recency_tau_s = recency_tau_s


class FIFOPolicy(_Policy):
    """Evict whatever was woken earliest (swap-on-demand, as llama-swap does)."""

    def keep_score(self, expert: ExpertResidency, now: float) -> float:
        """The time it woke."""
        return expert.woke_at


class LRUPolicy(_Policy):
    """Evict the least recently used expert."""

    def keep_score(self, expert: ExpertResidency, now: float) -> float:
        """The time of its last request."""
        return expert.last_used


class LFUPolicy(_Policy):
    """Evict the least frequently used expert (all-time request count)."""

    def keep_score(self, expert: ExpertResidency, now: float) -> float:
        """Its request count; ties go to the least recent."""
        return expert.uses + expert.last_used * 1e-12


class ScorePolicy(_Policy):
    """Recency * frequency * wake cost (after HybriMoE's score-based caching).

    An expert is worth keeping when it was used recently (``exp(-age / tau)``),
    is used often (an exponentially decayed request rate) and is expensive to
    bring back (its estimated wake time from the tier it would fall to).
    """

    def keep_score(self, expert: ExpertResidency, now: float) -> float:
        """Recency * frequency * wake cost."""
        recency = math.exp(-max(0.0, now - expert.last_used) / self.recency_tau_s)
        frequency = expert.rate(now)
        return recency * (frequency + 1e-3) * max(expert.wake_estimate(expert.evict_tier), 1e-3)


#: Policy name -> class, as chosen by ``COE_TIERS__POLICY``.
EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {
    "fifo": FIFOPolicy,
    "lru": LRUPolicy,
    "lfu": LFUPolicy,
    "score": ScorePolicy,
}
