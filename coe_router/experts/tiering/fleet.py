"""One truth for several gateways: tier changes under the fleet's device lease.

Each gateway runs its own :class:`~coe_router.experts.tiering.scheduler.TierScheduler`. With a
:class:`~coe_router.experts.tiering.tiers.TierCoordinator` (the shared store's tier table), every
wake or sleep runs while this gateway holds its device's lease: first the local view of
that device is brought up to date from the shared table (another gateway may have woken
or evicted experts meanwhile), then the change is re-checked against the budget with that
view, done, and published under the lease's fencing token. Between changes, a sync loop
keeps the view within ``sync_interval_s`` of the table.

So two gateways never change tiers on one device at once, and the awake set of the whole
fleet fits each device's budget. A sleep uses vLLM's ``mode=wait``, so another gateway's
requests in flight on an expert finish before it sleeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from coe_router.experts.tiering.tiers import ExpertResidency, SharedTier, Tier, TierCoordinator

log = logging.getLogger("coe_router.experts.tiering.tiers")


class FleetTiers:
    """A scheduler's link to the fleet's tier table."""

    def __init__(
        self,
        coordinator: TierCoordinator,
        experts: dict[str, ExpertResidency],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._coordinator = coordinator
        self._experts = experts
        self._clock = clock

    @asynccontextmanager
    async def locked(self, device: str, timeout_s: float) -> AsyncIterator[int | None]:
        """Hold ``device``'s lease (None: the store is down, act alone) with a fresh view."""
        token = await self._coordinator.lock(device, timeout_s)
        try:
            if token is not None:
                self.apply(await self._coordinator.table(), device)
            yield token
        finally:
            if token is not None:
                await self._coordinator.unlock(device, token)

    def apply(self, table: dict[str, SharedTier], device: str | None = None) -> bool:
        """Adopt the shared tiers of settled experts (on ``device``); True if any changed.

        Experts in a local transition keep their own state: their change is under way here.
        An expert another gateway is about to put to sleep stops taking requests here (it
        drains), so that nothing new reaches it once its sleep begins. An entry caught
        mid-wake counts as it was; the budget is re-checked under the lease anyway.
        """
        changed = False
        for e in self._experts.values():
            shared = table.get(e.name)
            if shared is None or e.transition is not None:
                continue
            if device is not None and e.device != device:
                continue
            if shared.transition == "sleeping":
                if e.tier == Tier.HOT and not e.draining:
                    e.draining = changed = True
                continue
            if shared.transition is not None:
                continue
            if shared.tier != e.tier:
                log.info("expert %r: %s -> %s (changed by another gateway)",
                         e.name, e.tier, shared.tier)  # fmt: skip
                e.tier = shared.tier
                if shared.tier == Tier.HOT:
                    e.woke_at = self._clock()
                changed = True
            if e.draining and e.in_flight == 0 and not e.waiters and shared.tier == Tier.HOT:
                # A sleep announced elsewhere did not happen (it failed, or was moot).
                e.draining, changed = False, True
        return changed

    async def publish(self, device: str, token: int, e: ExpertResidency) -> None:
        """Publish ``e``'s current tier (and transition) under ``token``."""
        ok = await self._coordinator.publish(
            device, token, e.name, SharedTier(e.tier, e.transition)
        )
        if not ok:
            log.warning("expert %r: tier write refused (the lease of %r moved on)", e.name, device)

    async def table(self) -> dict[str, SharedTier]:
        """The shared table."""
        return await self._coordinator.table()
