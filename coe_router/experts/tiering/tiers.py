"""Tiers: where an expert's weights are, and what the pool knows about each expert.

    hot   awake on the accelerator, serving
    warm  asleep, weights in CPU RAM (vLLM sleep level 1): wakes in about a second
    cold  weights dropped (vLLM sleep level 2) or the process not running

A :class:`ResidencyDriver` moves one expert between tiers; the scheduler
(:mod:`coe_router.experts.tiering.scheduler`) decides when.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol


class Tier(StrEnum):
    """Residency of an expert's weights."""

    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


class ResidencyDriver(Protocol):
    """Moves one expert between tiers (through vLLM's sleep API, or its process)."""

    #: Whether the expert can be warm; process tiering knows only hot and cold.
    can_sleep: bool

    async def wake(self, from_tier: Tier) -> None:
        """Bring the expert to hot; return only once it can serve."""
        ...

    async def sleep(self, level: int) -> Tier:
        """Put the expert to sleep at ``level`` (1: warm, 2: cold); return its new tier."""
        ...

    async def probe(self) -> Tier:
        """The tier the expert is actually in."""
        ...


@dataclass(frozen=True)
class SharedTier:
    """One expert's entry in the tier table several gateways share."""

    tier: Tier
    transition: Literal["waking", "sleeping"] | None


class TierCoordinator(Protocol):
    """Makes tier changes of several gateways one truth (a lease per device, fenced writes).

    A gateway changes an expert's tier only while it holds its device's lease, and
    publishes every change under the lease's fencing token; a holder that lost its lease
    (paused, partitioned) is refused. The shared table is what other gateways sync from.
    """

    async def lock(self, device: str, timeout_s: float) -> int | None:
        """Take ``device``'s transition lease (waiting up to ``timeout_s``); its fencing
        token, or None when the shared store is unavailable (act alone, as one gateway)."""
        ...

    async def publish(self, device: str, token: int, expert: str, entry: SharedTier) -> bool:
        """Write ``expert``'s entry while holding the lease under ``token``."""
        ...

    async def unlock(self, device: str, token: int) -> None:
        """Give the lease back."""
        ...

    async def table(self) -> dict[str, SharedTier]:
        """The shared tier table (empty when unavailable)."""
        ...


#: Default wake-time estimates (s) before any wake was measured: vLLM sleep-mode figures
#: for a small model (level 1 about 0.3 s, level 2 about 0.9 s) and a cold vLLM start.
DEFAULT_WAKE_ESTIMATE_S = {Tier.HOT: 0.0, Tier.WARM: 0.5, Tier.COLD: 30.0}

#: Half-life of the decayed request rate that frequency-aware policies use.
RATE_HALF_LIFE_S = 60.0


@dataclass
class Waiter:
    """A request waiting for its expert to be hot."""

    future: asyncio.Future[None]
    since: float


@dataclass
class ExpertResidency:
    """The pool's view of one expert: tier, load, usage history, wake statistics."""

    name: str
    memory_gb: float
    device: str
    driver: ResidencyDriver
    pinned: bool = False
    #: Level used when evicted: 1 keeps weights in CPU RAM, 2 drops them.
    sleep_level: int = 1
    tier: Tier = Tier.COLD
    transition: Literal["waking", "sleeping"] | None = None
    #: No new requests are let in; it sleeps once the last one finishes.
    draining: bool = False
    in_flight: int = 0
    waiters: deque[Waiter] = field(default_factory=deque)
    last_used: float = -math.inf
    woke_at: float = -math.inf
    wake_started: float = -math.inf
    uses: int = 0
    #: Exponentially decayed request count, as of ``_rate_at``.
    _rate: float = 0.0
    _rate_at: float = 0.0
    #: Measured wake times (EWMA) by the tier woken from.
    wake_s: dict[Tier, float] = field(default_factory=dict)
    wakes: int = 0
    sleeps: int = 0
    wake_failures: int = 0
    last_error: str = ""
    #: Until then a failed expert is not woken again; requests fail fast.
    unhealthy_until: float = -math.inf
    #: Until then an expert whose sleep failed is not chosen for eviction again.
    sleep_retry_at: float = -math.inf

    @property
    def evict_tier(self) -> Tier:
        """The tier it falls to when evicted."""
        return Tier.WARM if self.sleep_level == 1 and self.driver.can_sleep else Tier.COLD

    @property
    def holds_memory(self) -> bool:
        """Counts against its device's budget: hot, or on its way in or out."""
        return self.tier == Tier.HOT or self.transition is not None

    @property
    def serving(self) -> bool:
        """Hot, settled and letting requests in."""
        return self.tier == Tier.HOT and self.transition is None and not self.draining

    def record_use(self, now: float) -> None:
        """Count one request at ``now`` for recency and frequency."""
        self._rate = self.rate(now) + 1.0
        self._rate_at = now
        self.uses += 1
        self.last_used = now

    def rate(self, now: float) -> float:
        """The decayed request count at ``now``."""
        decay: float = 0.5 ** (max(0.0, now - self._rate_at) / RATE_HALF_LIFE_S)
        return self._rate * decay

    def wake_estimate(self, from_tier: Tier) -> float:
        """Expected seconds to wake from ``from_tier``: measured if known, else the default."""
        return self.wake_s.get(from_tier, DEFAULT_WAKE_ESTIMATE_S[from_tier])

    def describe(self, now: float) -> dict[str, Any]:
        """Its tier, load and wake statistics, for the admin view."""
        return {
            "tier": self.tier.value,
            "transition": self.transition,
            "draining": self.draining,
            "pinned": self.pinned,
            "device": self.device,
            "memory_gb": self.memory_gb,
            "in_flight": self.in_flight,
            "waiting": len(self.waiters),
            "last_used_s_ago": (
                None if math.isinf(self.last_used) else round(now - self.last_used, 3)
            ),
            "uses": self.uses,
            "wakes": self.wakes,
            "sleeps": self.sleeps,
            "wake_failures": self.wake_failures,
            "wake_s": {t.value: round(s, 3) for t, s in self.wake_s.items()},
            "last_error": self.last_error or None,
        }

    def record_wake(self, from_tier: Tier, seconds: float) -> None:
        """Fold a measured wake time into the estimate (EWMA, alpha 0.3)."""
        old = self.wake_s.get(from_tier)
        self.wake_s[from_tier] = seconds if old is None else 0.7 * old + 0.3 * seconds
        self.wakes += 1
