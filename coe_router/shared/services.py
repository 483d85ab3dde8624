"""The shared-state services of one gateway, opened and closed by the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from coe_router.catalog import Catalog
from coe_router.config import Settings
from coe_router.errors import StateUnavailable
from coe_router.metrics import Metrics
from coe_router.shared.affinity import Affinity
from coe_router.shared.cache import ResponseCache
from coe_router.shared.decision_log import DecisionLog
from coe_router.shared.ratelimit import RateLimiter
from coe_router.state import Background, StateGuard, StateStore, StoreAccess, open_store

log = logging.getLogger("coe_router.state")


@dataclass
class SharedServices:
    """The store and every use of it the request path needs."""

    store: StateStore
    guard: StateGuard
    background: Background
    limiter: RateLimiter
    cache: ResponseCache
    affinity: Affinity
    decisions: DecisionLog


@asynccontextmanager
async def open_shared_services(
    settings: Settings, catalog: Catalog, metrics: Metrics, store: StateStore | None = None
) -> AsyncIterator[SharedServices]:
    """Open the store chosen by ``settings`` (or use ``store``) and build its uses.

    An unreachable Redis does not stop start-up: the gateway serves without shared state
    (and says so) until Redis answers.
    """
    store = store or open_store(settings)
    s = settings.state
    guard = StateGuard(
        metrics, retry_interval_s=s.retry_interval_s, log_interval_s=s.log_interval_s
    )
    background = Background(
        guard, metrics, max_pending=s.background_queue, workers=s.background_workers
    )
    try:
        try:
            await store.ping()
            log.info("state store: %s", store.kind)
        except StateUnavailable as exc:
            log.warning("state store %s unreachable at start-up (%s); serving without it "
                        "until it answers", store.kind, exc)  # fmt: skip
        background.start()
        access = StoreAccess(store, guard, background)
        yield SharedServices(
            store=store,
            guard=guard,
            background=background,
            limiter=RateLimiter(settings.rate_limits, access, metrics),
            cache=ResponseCache(catalog, settings.cache, access, metrics),
            affinity=Affinity(settings.affinity, access, [e.name for e in catalog.experts]),
            decisions=DecisionLog(settings.decision_log, access),
        )
    finally:
        try:
            await background.aclose()
        finally:
            await store.aclose()
