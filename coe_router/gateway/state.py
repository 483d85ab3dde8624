"""What the lifespan builds and the routes use, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from coe_router.config import Settings
from coe_router.experts.catalog import Catalog
from coe_router.experts.pool import ExpertPool
from coe_router.gateway.shared import SharedState
from coe_router.metrics import Metrics
from coe_router.routing.table import RoutingTable


@dataclass
class GatewayState:
    """Per-app objects; the lifespan creates them and closes what needs closing."""

    settings: Settings
    catalog: Catalog
    table: RoutingTable
    metrics: Metrics
    pool: ExpertPool
    #: The state store and its uses (rate limits, cache, affinity, decision log).
    shared: SharedState


def gateway_state(request: Request) -> GatewayState:
    """The app's :class:`GatewayState` (set by the lifespan)."""
    state: GatewayState = request.app.state.coe
    return state
