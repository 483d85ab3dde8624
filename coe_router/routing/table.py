"""The routing table: which requested ``model`` names are routed, and by what."""

from __future__ import annotations

from collections.abc import Sequence

from coe_router.catalog import Catalog
from coe_router.errors import ModelNotFound
from coe_router.protocol import ChatMessage
from coe_router.routing.base import Router, RoutingDecision, build_router


class RoutingTable:
    """Virtual models go through their router; an expert's own name goes straight to it."""

    def __init__(self, catalog: Catalog) -> None:
        self.routers: dict[str, Router] = {
            v.name: build_router(v, catalog) for v in catalog.virtual_models
        }
        # Clients may use an expert's catalog name or the model name its server serves.
        self._direct = {e.name: e.name for e in catalog.experts}
        for e in catalog.experts:
            self._direct.setdefault(e.served_model_name, e.name)

    async def decide(self, model: str, messages: Sequence[ChatMessage]) -> RoutingDecision:
        """The decision for a request naming ``model``; unknown names raise ModelNotFound."""
        router = self.routers.get(model)
        if router is not None:
            return await router.route(messages)
        expert = self._direct.get(model)
        if expert is not None:
            return RoutingDecision(
                expert=expert, category=None, confidence=1.0, strategy="direct",
                reason="the request named this expert",
            )  # fmt: skip
        known = ", ".join([*self.routers, *sorted(set(self._direct.values()))])
        raise ModelNotFound(
            f"The model '{model}' does not exist. Available models: {known}.", param="model"
        )
