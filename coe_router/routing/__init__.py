"""Routing: from a conversation to the expert that should answer it."""

from coe_router.routing import keyword as _keyword  # noqa: F401  (registers "keyword")
from coe_router.routing.base import (
    ROUTER_CLS,
    Candidate,
    Router,
    RoutingDecision,
    build_router,
    message_text,
)

__all__ = ["ROUTER_CLS", "Candidate", "Router", "RoutingDecision", "build_router", "message_text"]
