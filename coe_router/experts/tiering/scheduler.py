"""The tier scheduler: wake experts on demand, within each device's memory budget.

Invariants (held at every moment, also under concurrency):

* the experts that hold accelerator memory on a device (hot, or waking, or going
  to sleep) fit in that device's budget: a wake starts only once the memory is
  free, and an evicted expert's memory counts until its sleep has finished;
* one wake per expert at a time (single flight): requests that arrive for an
  expert that is not hot wait on that one wake and are let in in arrival order;
* pinned experts are never evicted; an expert is put to sleep only once its
  in-flight requests are done (it drains first).

Scheduling: with ``grouped`` (ours, after Symbolic-MoE's "load each model once"),
requests for an awake expert go straight in, and the expert with the most waiting
requests wakes next, so one wake serves a whole group; a request that has waited
``max_wait_s`` jumps the queue and may drain a busy expert, which bounds
starvation. ``fifo`` serves wakes strictly in arrival order (swap on demand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Literal

from coe_router.errors import UpstreamTimeout, UpstreamUnavailable
from coe_router.experts.tiering.eviction import EvictionPolicy
from coe_router.experts.tiering.fleet import FleetTiers
from coe_router.experts.tiering.tiers import ExpertResidency, Tier, TierCoordinator, Waiter
from coe_router.experts.tiering.transitions import Transitions
from coe_router.metrics import Metrics

log = logging.getLogger("coe_router.experts.tiering.tiers")

SchedulingMode = Literal["grouped", "fifo"]


class TierScheduler:
    """Owns every expert's tier on the devices of one gateway."""

    def __init__(
        self,
        experts: Iterable[ExpertResidency],
        budgets_gb: dict[str, float],
        policy: EvictionPolicy,
        *,
        mode: SchedulingMode = "grouped",
        max_wait_s: float = 10.0,
        queue_timeout_s: float = 600.0,
        wake_timeout_s: float = 300.0,
        failure_backoff_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        coordinator: TierCoordinator | None = None,
        sync_interval_s: float = 1.0,
    ) -> None:
        self.experts = {e.name: e for e in experts}
        #: Several gateways: tier changes under the fleet's device lease (None: alone).
        self._fleet = FleetTiers(coordinator, self.experts, clock) if coordinator else None
        self._sync_interval_s = sync_interval_s
        self.budgets_gb = dict(budgets_gb)
        self.policy = policy
        self.mode: SchedulingMode = mode
        self.max_wait_s = max_wait_s
        self.queue_timeout_s = queue_timeout_s
        self.wake_timeout_s = wake_timeout_s
        self.failure_backoff_s = failure_backoff_s
        self._metrics = metrics
        self._clock = clock
        self._timers: list[asyncio.TimerHandle] = []
        #: Carries out the wakes and sleeps this scheduler decides on.
        self._transitions = Transitions(
            host=self, budgets_gb=self.budgets_gb, wake_timeout_s=wake_timeout_s,
            failure_backoff_s=failure_backoff_s, fleet=self._fleet,
            sync_interval_s=sync_interval_s, metrics=metrics, clock=clock,
        )  # fmt: skip
        #: Set (and replaced) after every scheduling round, for waiters on state changes.
        self._changed = asyncio.Event()
        for e in self.experts.values():
            if e.device not in self.budgets_gb:
                raise ValueError(f"expert {e.name!r}: no budget for device {e.device!r}")
            if e.memory_gb > self.budgets_gb[e.device]:
                raise ValueError(
                    f"expert {e.name!r} needs {e.memory_gb} GB; device {e.device!r} "
                    f"has a budget of {self.budgets_gb[e.device]} GB"
                )

    # --- the request path ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Keep ``name`` hot for the duration of one request (waking it if needed)."""
        await self.acquire(name)
        try:
            yield
        finally:
            self.release(name)

    async def acquire(self, name: str) -> None:
        """Wait until ``name`` is hot and count one request in flight on it."""
        e = self.experts[name]
        now = self._clock()
        if now < e.unhealthy_until:
            raise UpstreamUnavailable(
                f"expert {name!r} failed to wake ({e.last_error}); retry after "
                f"{e.unhealthy_until - now:.0f} s"
            )
        e.record_use(now)
        if e.serving and not e.waiters and self._may_pass(e, now):
            e.in_flight += 1
            self._observe_wait(e, 0.0)
            return
        loop = asyncio.get_running_loop()
        waiter = Waiter(loop.create_future(), now)
        e.waiters.append(waiter)
        if self.mode == "grouped":
            # Promotion to "starving" must not wait for the next release or transition.
            self.reschedule_in(self.max_wait_s)
        self.reschedule()
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await asyncio.shield(waiter.future)
        except TimeoutError:
            # A grant can land while the timeout unwinds: then the request goes
            # in after all (else its in-flight count would leak).
            if not _granted(waiter):
                self._drop(e, waiter)
                raise UpstreamTimeout(
                    f"waited {self.queue_timeout_s:.0f} s for expert {name!r} to wake"
                ) from None
        except asyncio.CancelledError:
            # The client went away. A grant that raced the cancellation is handed back.
            if _granted(waiter):
                self.release(name)
            else:
                self._drop(e, waiter)
            raise
        self._observe_wait(e, self._clock() - waiter.since)

    def release(self, name: str) -> None:
        """One request on ``name`` finished."""
        e = self.experts[name]
        e.in_flight -= 1
        e.last_used = self._clock()
        self.reschedule()

    # --- admin -----------------------------------------------------------------------------

    async def wake(self, name: str) -> None:
        """Wake ``name`` now (admin): the same path as a request, without one."""
        await self.acquire(name)
        self.release(name)

    async def sleep(self, name: str) -> None:
        """Put ``name`` to sleep once its in-flight requests are done (admin)."""
        e = self.experts[name]
        if e.pinned:
            raise UpstreamUnavailable(f"expert {name!r} is pinned; unpin it first")
        # A wake in progress ends by clearing ``draining``: let it finish first.
        while e.transition == "waking":
            await self._changed.wait()
        if e.tier != Tier.HOT and e.transition is None:
            return
        e.draining = True
        self.reschedule()
        while e.transition is not None or e.draining:
            await self._changed.wait()
        if e.tier == Tier.HOT:
            raise UpstreamUnavailable(f"expert {name!r} did not go to sleep: {e.last_error}")

    def pin(self, name: str, pinned: bool) -> None:
        """Pin (never evict) or unpin ``name``."""
        self.experts[name].pinned = pinned
        self.reschedule()

    def expected_wake_s(self, name: str) -> float:
        """Seconds before ``name`` could serve a new request (0 when hot or unmanaged)."""
        e = self.experts.get(name)
        if e is None or e.serving:
            return 0.0
        if e.transition == "waking":
            return max(
                0.0,
                e.wake_estimate(Tier.COLD if e.tier == Tier.COLD else Tier.WARM)
                - (self._clock() - e.wake_started),
            )
        return e.wake_estimate(e.tier if e.tier != Tier.HOT else e.evict_tier)

    # --- budget ----------------------------------------------------------------------------

    def used_gb(self, device: str) -> float:
        """Memory held on ``device`` by hot, waking and sleeping experts."""
        return sum(e.memory_gb for e in self.experts.values()
                   if e.device == device and e.holds_memory)  # fmt: skip

    async def start(self) -> None:
        """Learn each expert's actual tier, then enforce the budget (pinned first)."""
        tiers = await asyncio.gather(*(e.driver.probe() for e in self.experts.values()))
        for e, tier in zip(self.experts.values(), tiers, strict=True):
            e.tier = tier
            if tier == Tier.HOT:
                e.woke_at = self._clock()
        for device, budget in self.budgets_gb.items():
            hot = sorted(
                (e for e in self.experts.values() if e.device == device and e.tier == Tier.HOT),
                key=lambda e: (not e.pinned, e.name),
            )
            used = 0.0
            for e in hot:
                if used + e.memory_gb <= budget:
                    used += e.memory_gb
                else:
                    self._transitions.start_sleep(e)
        if self._fleet is not None:
            self._fleet.apply(await self._fleet.table())
            self._transitions.spawn(self._sync_loop(), "tier-sync")
        self.publish_state()

    async def _sync_loop(self) -> None:
        """Keep the view of settled experts within ``sync_interval_s`` of the fleet's table."""
        assert self._fleet is not None
        while True:
            await asyncio.sleep(self._sync_interval_s)
            if self._fleet.apply(await self._fleet.table()):
                self.reschedule()

    def prewarm(self) -> None:
        """Start waking, per device, the experts that fit: pinned first, then in order."""
        for device, budget in self.budgets_gb.items():
            asleep = [
                e
                for e in self.experts.values()
                if e.device == device and not e.holds_memory and e.tier != Tier.HOT
            ]
            for e in sorted(asleep, key=lambda e: not e.pinned):  # stable: catalog order
                if self.used_gb(device) + e.memory_gb <= budget + 1e-9:
                    self._transitions.start_wake(e)
        self.publish_state()

    async def aclose(self) -> None:
        """Cancel transitions in progress and fail whoever still waits."""
        for timer in self._timers:
            timer.cancel()
        await self._transitions.aclose()
        for e in self.experts.values():
            self.fail_waiters(e, UpstreamUnavailable("the gateway is shutting down"))

    # --- scheduling ------------------------------------------------------------------------

    def _may_pass(self, e: ExpertResidency, now: float) -> bool:
        """fifo: a request may not overtake an older one waiting for another expert."""
        if self.mode == "grouped":
            return True
        return not any(
            o.waiters and o.waiters[0].since < now and self._can_fit(o)
            for o in self.experts.values()
            if o is not e
        )

    def _can_fit(self, c: ExpertResidency) -> bool:
        """Whether ``c`` fits once every unpinned expert on its device is asleep: one that
        does not waits for an unpin (or its queue timeout) and must hold up no one else."""
        pinned = sum(
            e.memory_gb for e in self.experts.values()
            if e is not c and e.device == c.device and e.pinned and e.holds_memory
            and e.transition != "sleeping"
        )  # fmt: skip
        return c.memory_gb <= self.budgets_gb[c.device] - pinned + 1e-9

    def reschedule(self) -> None:
        """Grant what can be granted, start wakes and evictions. Never awaits.

        Called after every arrival, release and transition, and by timers (starvation).
        """
        now = self._clock()
        for e in self.experts.values():
            if e.serving and e.waiters:
                self._grant(e, now)
            if e.draining and e.in_flight == 0 and e.transition is None and e.tier == Tier.HOT:
                self._transitions.start_sleep(e)
        blocked: set[str] = set()
        for c in self._wake_order(now):
            if c.device in blocked:
                continue
            budget = self.budgets_gb[c.device]
            free = budget - self.used_gb(c.device)
            if c.memory_gb <= free + 1e-9:
                self._transitions.start_wake(c)
                continue
            if not self._can_fit(c):
                continue
            # Later candidates on this device must not take the memory this one waits for.
            blocked.add(c.device)
            self._make_room(c, c.memory_gb - free, now)
        self.publish_state()

    def _grant(self, e: ExpertResidency, now: float) -> None:
        while e.waiters:
            if self.mode == "fifo" and not self._may_pass(e, e.waiters[0].since):
                return
            waiter = e.waiters.popleft()
            if waiter.future.done():  # cancelled meanwhile
                continue
            e.in_flight += 1
            waiter.future.set_result(None)

    def _wake_order(self, now: float) -> list[ExpertResidency]:
        waiting = [
            e for e in self.experts.values()
            if e.waiters and e.tier != Tier.HOT and e.transition is None
            and now >= e.unhealthy_until
        ]  # fmt: skip
        if self.mode == "fifo":
            return sorted(waiting, key=lambda e: e.waiters[0].since)

        def priority(e: ExpertResidency) -> tuple[bool, float, int, float]:
            age = now - e.waiters[0].since
            starving = age >= self.max_wait_s
            # Starving first (oldest first); then the biggest group; then the oldest.
            return (not starving, -age if starving else 0.0, -len(e.waiters), e.waiters[0].since)

        return sorted(waiting, key=priority)

    def _make_room(self, c: ExpertResidency, need_gb: float, now: float) -> None:
        """Evict (or drain) experts on ``c``'s device until ``need_gb`` more is coming free."""
        device = c.device
        coming = sum(
            e.memory_gb for e in self.experts.values()
            if e.device == device and (e.transition == "sleeping" or e.draining)
        )  # fmt: skip
        if coming >= need_gb - 1e-9:
            return
        starving = now - c.waiters[0].since >= self.max_wait_s
        candidates = [
            e for e in self.experts.values()
            if e.device == device and e.serving and not e.pinned and now >= e.sleep_retry_at
        ]  # fmt: skip
        if self.mode == "grouped" and not starving:
            # Do not cut a busy expert's group short; only idle ones may go.
            candidates = [e for e in candidates if e.in_flight == 0 and not e.waiters]
        candidates.sort(key=lambda e: self.policy.keep_score(e, now))
        for e in candidates:
            if coming >= need_gb - 1e-9:
                break
            coming += e.memory_gb
            e.draining = True
            if e.in_flight == 0:
                self._transitions.start_sleep(e)

    def fail_waiters(self, e: ExpertResidency, exc: Exception) -> None:
        """Fail every request waiting for ``e`` with ``exc``."""
        while e.waiters:
            waiter = e.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    def _drop(self, e: ExpertResidency, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            e.waiters.remove(waiter)
        if not waiter.future.done():
            waiter.future.cancel()
        self.reschedule()

    def reschedule_in(self, delay_s: float) -> None:
        """Schedule again after ``delay_s`` (a back-off ended, a waiter may starve)."""
        loop = asyncio.get_running_loop()
        self._timers = [t for t in self._timers if t.when() > loop.time()]
        self._timers.append(loop.call_later(delay_s, self.reschedule))

    @property
    def transition_tasks(self) -> list[asyncio.Task[None]]:
        """Wakes, sleeps and the sync loop still running (tests wait for them to settle)."""
        return self._transitions.tasks

    def _observe_wait(self, e: ExpertResidency, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.queue_wait.labels(e.name).observe(seconds)

    def publish_state(self) -> None:
        """Wake whoever waits on a state change; export tiers and budgets as metrics."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        m = self._metrics
        if m is None:
            return
        for e in self.experts.values():
            for tier in Tier:
                m.tier.labels(e.name, tier.value).set(1 if e.tier == tier else 0)
        for device, budget in self.budgets_gb.items():
            m.budget_total.labels(device).set(budget)
            m.budget_used.labels(device).set(self.used_gb(device))


def _granted(waiter: Waiter) -> bool:
    """The waiter was let in (its future holds a result, not a cancellation or error)."""
    f = waiter.future
    return f.done() and not f.cancelled() and f.exception() is None
