"""Routing: from a conversation to the expert that should answer it."""

from coe_router.routing import category as _category  # noqa: F401  (registers "category")
from coe_router.routing import keyword as _keyword  # noqa: F401  (registers "keyword")
from coe_router.routing import retriever as _retriever  # noqa: F401  (registers "retriever")
from coe_router.routing import skill as _skill  # noqa: F401  (registers "skill")
from coe_router.routing.base import (
    ROUTER_CLS,
    Candidate,
    Router,
    RoutingDecision,
    build_router,
    message_text,
)

__all__ = ["ROUTER_CLS", "Candidate", "Router", "RoutingDecision", "build_router", "message_text"]
