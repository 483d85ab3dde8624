"""What the lifespan builds and the routes use, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from coe_router.catalog import Catalog
from coe_router.config import Settings
from coe_router.experts.pool import ExpertPool
from coe_router.lifecycle import LifecycleServices
from coe_router.metrics import Metrics
from coe_router.routing.placement import Placement
from coe_router.routing.table import RoutingTable
from coe_router.shared.services import SharedServices


@dataclass
class AppContext:
    """Per-app objects; the lifespan creates them and closes what needs closing."""

    settings: Settings
    catalog: Catalog
    table: RoutingTable
    metrics: Metrics
    pool: ExpertPool
    #: The state store and its uses (rate limits, cache, affinity, decision log).
    shared: SharedServices
    #: Routing with affinity, wake cost and the decision log.
    placement: Placement
    #: What every request's lifecycle talks to.
    lifecycle: LifecycleServices


def app_context(request: Request) -> AppContext:
    """The app's :class:`AppContext` (set by the lifespan)."""
    context: AppContext = request.app.state.coe
    return context
