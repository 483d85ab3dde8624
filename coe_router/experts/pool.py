"""The expert pool: every expert's client, the processes it launched, and their health.

The pool is an async context manager owned by the gateway's lifespan: entering it
starts launched experts (in the background, the generalist first:
:mod:`coe_router.experts.launch`) and the health loop; leaving it stops them, always.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from types import TracebackType
from typing import Any

import httpx

from coe_router.catalog import Catalog
from coe_router.config import Settings
from coe_router.errors import ConfigError
from coe_router.experts.expert import ExpertClient
from coe_router.experts.launch import launch, launch_waves, queue_waves
from coe_router.experts.process import LOADING_STATES, LocalProcess
from coe_router.experts.replica import Replica
from coe_router.experts.tiering.drivers import ProcessDriver, VLLMSleepDriver
from coe_router.experts.tiering.eviction import EVICTION_POLICIES
from coe_router.experts.tiering.scheduler import TierScheduler
from coe_router.experts.tiering.tiers import ExpertResidency, ResidencyDriver, Tier, TierCoordinator
from coe_router.metrics import Metrics

log = logging.getLogger("coe_router.experts")


class ExpertPool:
    """Name -> :class:`ExpertClient`, plus lifecycle."""

    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_all_ready: Callable[[ExpertPool], None] | None = None,
        coordinator: TierCoordinator | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._on_all_ready = on_all_ready
        self.processes: dict[str, LocalProcess] = {}
        self.experts: dict[str, ExpertClient] = {}
        #: The catalog's generalist: the last stop of a cross-expert fallback.
        self.generalist = catalog.generalist.name
        for spec in catalog.experts:
            process = None
            if spec.launch is not None and settings.local.launch:
                process = LocalProcess(
                    spec.name, spec.launch, spec.served_model_name, settings.local
                )
                self.processes[spec.name] = process
            replicas = [
                Replica(spec.name, url, settings.upstream, process=process, transport=transport)
                for url in spec.base_urls
            ]
            self.experts[spec.name] = ExpertClient(
                spec, replicas, metrics, settings.upstream.max_attempts
            )
        self._tasks: list[asyncio.Task[None]] = []
        #: The tiered pool's scheduler; None when tiering is off.
        self.scheduler = self._build_tiers(catalog, coordinator) if settings.tiers.enabled else None

    def _build_tiers(self, catalog: Catalog, coordinator: TierCoordinator | None) -> TierScheduler:
        """A scheduler over the experts that can change tier; the others stay as they are."""
        ts = self._settings.tiers
        residents = []
        for spec in catalog.experts:
            client = self.experts[spec.name]
            driver: ResidencyDriver
            if spec.name in self.processes:
                driver = ProcessDriver(self.processes[spec.name], client.replicas[0])
            elif spec.tier.sleep_mode:
                driver = VLLMSleepDriver(spec.name, client.replicas, ts.wake_timeout_s)
            else:
                continue
            residents.append(ExpertResidency(
                name=spec.name, memory_gb=spec.memory_gb, device=spec.tier.device,
                driver=driver, pinned=spec.tier.pinned, sleep_level=spec.tier.sleep_level,
            ))  # fmt: skip
        policy = EVICTION_POLICIES[ts.policy](recency_tau_s=ts.recency_tau_s)
        try:
            return TierScheduler(
                residents, ts.budgets_gb, policy, mode=ts.scheduler, max_wait_s=ts.max_wait_s,
                queue_timeout_s=ts.queue_timeout_s, wake_timeout_s=ts.wake_timeout_s,
                failure_backoff_s=ts.failure_backoff_s, metrics=self._metrics,
                coordinator=coordinator, sync_interval_s=ts.sync_interval_s,
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"tiers: {exc}") from None

    def hold(self, name: str) -> AbstractAsyncContextManager[None]:
        """Keep ``name`` awake for one call (waking it first); a no-op when it is not tiered."""
        if self.scheduler is not None and name in self.scheduler.experts:
            return self.scheduler.hold(name)
        return nullcontext()

    async def acquire(self, name: str) -> Callable[[], None]:
        """Wait until ``name`` can serve and count one request on it; returns the release.

        For work that outlives the caller's scope (a stream handed to the server); a no-op
        release when ``name`` is not tiered.
        """
        scheduler = self.scheduler
        if scheduler is None or name not in scheduler.experts:
            return _nothing
        await scheduler.acquire(name)
        return lambda: scheduler.release(name)

    def expected_wake_s(self, name: str) -> float:
        """Seconds before ``name`` could serve (0 when awake or not tiered)."""
        return 0.0 if self.scheduler is None else self.scheduler.expected_wake_s(name)

    def get(self, name: str) -> ExpertClient | None:
        """The expert called ``name``."""
        return self.experts.get(name)

    def replicas(self) -> list[Replica]:
        """Every replica of every expert."""
        return [r for e in self.experts.values() for r in e.replicas]

    def is_live(self, name: str) -> bool:
        """Whether ``name`` can serve a request now: a replica is up and its breaker is not
        open, or the expert sleeps on purpose and can be woken (unless its last wake failed
        and it is still in its back-off). Unknown names are not live."""
        e = self.experts.get(name)
        if e is None:
            return False
        if self.scheduler is not None and name in self.scheduler.experts:
            r = self.scheduler.experts[name]
            if r.tier != Tier.HOT:
                return time.monotonic() >= r.unhealthy_until
        return e.live

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Per expert: live (see :meth:`is_live`), required or not, tier, replica states."""
        out: dict[str, dict[str, Any]] = {}
        for name, e in self.experts.items():
            entry: dict[str, Any] = {"live": self.is_live(name), "required": e.spec.required}
            if self.scheduler is not None and name in self.scheduler.experts:
                entry["tier"] = self.scheduler.experts[name].tier.value
            entry["replicas"] = [r.describe() for r in e.replicas]
            out[name] = entry
        return out

    @property
    def ready(self) -> bool:
        """Every required expert has a live replica (or sleeps and can be woken)."""
        return all(e["live"] for e in self.readiness().values() if e["required"])

    async def __aenter__(self) -> ExpertPool:
        managed = set(self.scheduler.experts) if self.scheduler is not None else set()
        # The tier scheduler starts its own; the others start in the background, so the
        # gateway listens (and says what is loading) at once.
        own = {n: p for n, p in self.processes.items() if n not in managed}
        waves = launch_waves(
            own, self.generalist, generalist_first=self._settings.local.generalist_first
        )
        queue_waves(waves)
        if waves:
            task = launch(waves, self._settings.local.wave_timeout_s)
            self._tasks.append(asyncio.create_task(task, name="launch"))
        await self.check_all()
        if self.scheduler is not None:
            await self.scheduler.start()
            if self._settings.tiers.prewarm:
                self.scheduler.prewarm()
        self._tasks.append(asyncio.create_task(self._health_loop(), name="health"))
        if self.processes:
            self._tasks.append(asyncio.create_task(self._progress_loop(), name="progress"))
        elif self._on_all_ready is not None:
            self._on_all_ready(self)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a background task's failure must not skip the stops below
                log.exception("pool task %r failed", task.get_name())
        if self.scheduler is not None:
            await self.scheduler.aclose()
        await asyncio.gather(*(r.aclose() for r in self.replicas()))
        await asyncio.gather(*(p.stop() for p in self.processes.values()))

    async def check_all(self) -> None:
        """One health round over every replica, concurrently."""
        replicas = self.replicas()
        await asyncio.gather(*(r.check_health() for r in replicas))
        for e in self.experts.values():
            # The replica's index in the catalog, not its URL: /metrics is unauthenticated.
            for i, r in enumerate(e.replicas):
                self._metrics.replica_up.labels(r.expert, str(i)).set(r.state == "up")

    async def _health_loop(self) -> None:
        interval = self._settings.upstream.health_interval_s
        while True:
            # Poll fast while something is loading so it is used as soon as it can serve.
            loading = any(r.state == "starting" for r in self.replicas())
            await asyncio.sleep(min(interval, 1.0) if loading else interval)
            try:
                await self.check_all()
            except Exception:  # a bug here must not end health checking
                log.exception("health round failed")

    async def _progress_loop(self) -> None:
        """Say what launched experts are doing until each is ready, failed or gone."""
        interval = self._settings.local.progress_interval_s
        reported: set[str] = set()
        last_line = 0.0
        loop = asyncio.get_running_loop()
        while True:
            pending = [n for n, p in self.processes.items() if p.state in LOADING_STATES]
            for name, p in self.processes.items():
                if name not in pending and name not in reported:
                    reported.add(name)
                    if p.state != "ready":
                        log.error("expert %r did not start: %s", name, p.detail)
            if not pending:
                if self._on_all_ready is not None:
                    self._on_all_ready(self)
                return
            if loop.time() - last_line >= interval:
                last_line = loop.time()
                for name in pending:
                    p = self.processes[name]
                    # A queued expert's log is still the previous run's.
                    tail = "" if p.state == "queued" else f" | {p.log_tail()}"
                    log.info("expert %r: %s%s", name, p.progress(), tail)
            await asyncio.sleep(0.5)


def _nothing() -> None:
    """The release of an expert that is not tiered."""
