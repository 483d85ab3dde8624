"""The app factory. The lifespan owns every client and process, through one AsyncExitStack."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI

from coe_router import __version__
from coe_router.catalog import load_catalog
from coe_router.config import Settings
from coe_router.experts.pool import ExpertPool
from coe_router.gateway import admin, chat, messages, meta
from coe_router.gateway.admission import Admission
from coe_router.gateway.context import AppContext
from coe_router.gateway.drain import Drain
from coe_router.gateway.handlers import install_handlers
from coe_router.gateway.schema import install_openapi
from coe_router.lifecycle import LifecycleServices
from coe_router.metrics import Metrics
from coe_router.routing.embedder import shutdown_encoder_executor
from coe_router.routing.placement import Placement
from coe_router.routing.table import RoutingTable
from coe_router.shared.services import open_shared_services
from coe_router.shared.tier_table import SharedTierTable
from coe_router.state import StateStore

log = logging.getLogger("coe_router.gateway")


def create_app(
    settings: Settings,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    state_store: StateStore | None = None,
) -> FastAPI:
    """Build the gateway for ``settings``.

    The catalog is loaded and routers are built here, so a bad catalog fails before
    the server binds; clients and processes start in the lifespan.
    ``upstream_transport`` replaces the network for every replica (tests, benchmarks);
    ``state_store`` replaces the store the settings choose (the app closes it).
    """
    catalog = load_catalog(settings.catalog)
    table = RoutingTable(catalog)
    metrics = Metrics()

    def announce(pool: ExpertPool) -> None:
        s = settings.server
        if not pool.ready:
            missing = [n for n, e in pool.readiness().items() if e["required"] and not e["live"]]
            log.warning(
                "coe-router is listening on http://%s:%d but not ready: no live replica for %s "
                "(see GET /ready)", s.host, s.port, ", ".join(missing),
            )  # fmt: skip
            return
        log.info(
            "coe-router ready on http://%s:%d  (models: %s). Try:\n"
            "  curl -s http://%s:%d/v1/chat/completions -H 'content-type: application/json' "
            "-d '{\"model\": \"%s\", \"messages\": [{\"role\": \"user\", "
            "\"content\": \"Write a Python function that reverses a string.\"}]}'",
            s.host, s.port, ", ".join(table.routers) or "-", s.host, s.port,
            next(iter(table.routers), catalog.experts[0].name),
        )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # The routers' encoder threads belong to the app: stopped last, on the way out.
            stack.callback(shutdown_encoder_executor)
            # Opened first, closed last: queued state writes still land while the pool stops.
            shared = await stack.enter_async_context(
                open_shared_services(settings, catalog, metrics, state_store)
            )
            # A shared store makes tier changes one truth for the fleet; alone, no need.
            coordinator = (
                SharedTierTable(shared.store, shared.guard, ttl_s=settings.tiers.lease_ttl_s)
                if settings.tiers.enabled and shared.store.kind != "memory" else None
            )  # fmt: skip
            pool = await stack.enter_async_context(
                ExpertPool(catalog, settings, metrics, transport=upstream_transport,
                           on_all_ready=announce, coordinator=coordinator)
            )  # fmt: skip
            placement = Placement(
                table, shared.affinity, shared.decisions, metrics,
                wake_s=pool.expected_wake_s if pool.scheduler is not None else None,
                wake_cost_weight=settings.tiers.wake_cost_weight,
            )  # fmt: skip
            services = LifecycleServices(metrics, pool, shared.limiter, shared.cache)
            app.state.coe = AppContext(
                settings, catalog, table, metrics, pool, shared, placement, services
            )
            # Everything built so far lives as long as the app: keep it out of the cyclic
            # collector's full passes, which otherwise stall a request for tens of ms.
            gc.collect()
            gc.freeze()
            yield

    docs = settings.server.docs  # off by default: the schema describes the deployment
    app = FastAPI(
        title="coe-router",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        redoc_url=None,
    )
    # The CLI's server starts the drain on SIGTERM; the middleware ends what outlives it.
    app.state.drain = Drain(settings.server.drain_s)
    app.add_middleware(Admission, settings=settings.server, drain=app.state.drain)
    install_handlers(app)
    app.include_router(chat.router)
    app.include_router(messages.router)
    app.include_router(meta.router)
    app.include_router(admin.router)
    install_openapi(app, [*table.routers, *(e.name for e in catalog.experts)])
    return app
