"""Carrying out tier changes: wake and sleep an expert, alone or under the fleet's lease.

The scheduler decides *what* changes (:mod:`coe_router.experts.tiering.scheduler`); a
:class:`Transitions` component *does* them as background tasks and reports back through its
:class:`TransitionHost` (the scheduler), which then schedules again.
A failed wake puts the expert back to sleep at level 2 (its memory stays counted until
that is done); a failed sleep keeps it hot and serving, out of eviction for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from coe_router.errors import UpstreamUnavailable
from coe_router.experts.tiering.fleet import FleetTiers
from coe_router.experts.tiering.tiers import ExpertResidency, Tier
from coe_router.metrics import Metrics

log = logging.getLogger("coe_router.experts.tiers")


class TransitionHost(Protocol):
    """What a :class:`Transitions` component needs from the scheduler that owns it."""

    def reschedule(self) -> None:
        """Look again at who waits and what can change (after every transition)."""
        ...

    def publish_state(self) -> None:
        """Tell waiters and metrics that tiers changed."""
        ...

    def fail_waiters(self, e: ExpertResidency, exc: Exception) -> None:
        """Fail every request waiting for ``e``."""
        ...

    def used_gb(self, device: str) -> float:
        """Memory held on ``device`` now."""
        ...

    def reschedule_in(self, delay_s: float) -> None:
        """Schedule again after ``delay_s`` (a back-off ended)."""
        ...


@dataclass(eq=False, kw_only=True)
class Transitions:
    """Runs wakes and sleeps as tasks; one per expert at a time (the scheduler ensures it)."""

    host: TransitionHost
    budgets_gb: dict[str, float]
    wake_timeout_s: float
    failure_backoff_s: float
    #: The fleet's tier table (None: this gateway alone decides).
    fleet: FleetTiers | None
    sync_interval_s: float
    metrics: Metrics | None
    clock: Callable[[], float]
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The transitions (and background loops) still running."""
        return list(self._tasks)

    async def aclose(self) -> None:
        """Cancel whatever still runs and wait until it has unwound."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task this component tracks (and cancels on close)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start_wake(self, e: ExpertResidency) -> None:
        """Begin waking ``e`` (its memory counts from now on)."""
        e.transition = "waking"
        e.wake_started = self.clock()
        self.spawn(self._wake(e), f"wake-{e.name}")

    def start_sleep(self, e: ExpertResidency) -> None:
        """Begin putting ``e`` to sleep (its memory counts until the sleep is done)."""
        e.transition = "sleeping"
        self.spawn(self._sleep(e), f"sleep-{e.name}")

    async def _under_lease(
        self,
        e: ExpertResidency,
        alone: Callable[[ExpertResidency], Awaitable[None]],
        leased: Callable[[ExpertResidency, FleetTiers, int], Awaitable[None]],
        timed_out: Callable[[ExpertResidency], None],
    ) -> None:
        """Run a transition: alone (one gateway, or the store is down: ``alone``), else
        while holding the device's fleet lease (``leased``, with its fencing token), once
        the expert's tier was read from the expert itself: the table may lag, or hold a
        dead gateway's half-done change."""
        if self.fleet is None:
            await alone(e)
            return
        try:
            async with self.fleet.locked(e.device, self.wake_timeout_s) as token:
                if token is None:  # the store is down: act alone
                    await alone(e)
                    return
                e.tier = await e.driver.probe()
                await leased(e, self.fleet, token)
        except TimeoutError:
            timed_out(e)
        self.host.reschedule()

    async def _wake(self, e: ExpertResidency) -> None:
        await self._under_lease(e, self._do_wake, self._wake_leased, self._lease_refused)

    async def _wake_leased(self, e: ExpertResidency, fleet: FleetTiers, token: int) -> None:
        if e.tier == Tier.HOT:  # another gateway woke it meanwhile
            e.transition, e.draining = None, False
        elif self.host.used_gb(e.device) > self.budgets_gb[e.device] + 1e-9:
            # The fleet's awake set leaves no room now: back to the queue.
            e.transition = None
        else:
            await fleet.publish(e.device, token, e)
            await self._do_wake(e)
        await fleet.publish(e.device, token, e)

    def _lease_refused(self, e: ExpertResidency) -> None:
        e.transition = None
        self.host.fail_waiters(
            e,
            UpstreamUnavailable(
                f"expert {e.name!r}: another gateway held the tier lease for too long"
            ),
        )

    async def _do_wake(self, e: ExpertResidency) -> None:
        from_tier = e.tier
        t0 = self.clock()
        try:
            async with asyncio.timeout(self.wake_timeout_s):
                await e.driver.wake(from_tier)
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            e.wake_failures += 1
            e.last_error = reason
            e.unhealthy_until = self.clock() + self.failure_backoff_s
            log.error("expert %r: wake from %s failed: %s", e.name, from_tier, reason)
            if self.metrics is not None:
                self.metrics.wake_failures.labels(e.name).inc()
            self.host.fail_waiters(
                e, UpstreamUnavailable(f"expert {e.name!r} failed to wake: {reason}")
            )
            # A wake that failed halfway or timed out may hold memory (the server may even
            # finish it on its own): put it back to sleep at level 2 (its weights may be
            # garbage) and count its memory until that is done.
            e.transition = "sleeping"
            self.host.publish_state()
            try:
                async with asyncio.timeout(self.wake_timeout_s):
                    e.tier = await e.driver.sleep(2)
            except Exception as sleep_exc:
                log.error("expert %r: sleep after a failed wake failed: %s", e.name, sleep_exc)
                with contextlib.suppress(Exception):
                    e.tier = await e.driver.probe()
            e.transition = None
            self.host.reschedule()
            return
        elapsed = self.clock() - t0
        e.tier, e.transition, e.draining = Tier.HOT, None, False
        e.woke_at = self.clock()
        e.record_wake(from_tier, elapsed)
        log.info("expert %r: %s -> hot in %.2f s", e.name, from_tier, elapsed)
        if self.metrics is not None:
            self.metrics.wake_seconds.labels(e.name, from_tier.value).observe(elapsed)
            self.metrics.switches.labels(e.name).inc()
        self.host.reschedule()

    async def _sleep(self, e: ExpertResidency) -> None:
        await self._under_lease(e, self._do_sleep, self._sleep_leased, self._sleep_abandoned)

    async def _sleep_leased(self, e: ExpertResidency, fleet: FleetTiers, token: int) -> None:
        if e.tier != Tier.HOT:  # another gateway put it to sleep meanwhile
            e.transition, e.draining = None, False
        else:
            # Announce the sleep, then give the other gateways two sync rounds to
            # stop sending to it; what they already sent finishes (mode=wait).
            await fleet.publish(e.device, token, e)
            await asyncio.sleep(2 * self.sync_interval_s)
            await self._do_sleep(e)
        await fleet.publish(e.device, token, e)

    @staticmethod
    def _sleep_abandoned(e: ExpertResidency) -> None:
        e.transition, e.draining = None, False

    async def _do_sleep(self, e: ExpertResidency) -> None:
        level = e.sleep_level if e.driver.can_sleep else 2
        t0 = self.clock()
        try:
            tier = await e.driver.sleep(level)
        except Exception as exc:
            # Its memory is still held: keep it hot and serving rather than guess.
            log.error("expert %r: sleep failed: %s", e.name, exc)
            e.last_error = f"sleep failed: {exc}"
            e.tier, e.transition, e.draining = Tier.HOT, None, False
            # Not chosen for eviction again until the backoff ends (no tight retry loop);
            # then look again, for whoever still waits for its memory.
            e.sleep_retry_at = self.clock() + self.failure_backoff_s
            self.host.reschedule_in(self.failure_backoff_s)
            self.host.reschedule()
            return
        elapsed = self.clock() - t0
        e.tier, e.transition, e.draining = tier, None, False
        e.sleeps += 1
        log.info("expert %r: hot -> %s in %.2f s", e.name, tier, elapsed)
        if self.metrics is not None:
            self.metrics.sleep_seconds.labels(e.name, str(level)).observe(elapsed)
        self.host.reschedule()
