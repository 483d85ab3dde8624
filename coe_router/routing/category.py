"""CoE category routing: classify the request, then map its category to an expert.

Step one is a calibrated classifier over sentence embeddings (the artifact); step two
is a table from category to expert. With expert profiles the table takes, per
category, the expert with the best measured quality net of ``cost_weight * cost``;
without them, the cheapest expert that declares the category in the catalog. When
the classifier is not confident enough (below ``threshold``) the catalog's generalist
answers: a wrong specialist is worse than a decent generalist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coe_router.catalog import Catalog
from coe_router.protocol import ChatMessage
from coe_router.routing.artifact import ExpertProfiles
from coe_router.routing.base import ROUTER_CLS, RoutingDecision
from coe_router.routing.context import blend
from coe_router.routing.trained import (
    TrainedCore,
    check_options,
    expert_scores_from_categories,
    ranked_alternatives,
)


def category_expert_map(
    catalog: Catalog,
    categories: Sequence[str],
    profiles: ExpertProfiles | None = None,
    cost_weight: float = 0.0,
) -> dict[str, str]:
    """Category -> expert: profiled quality net of cost, else the catalog, else the generalist."""
    out: dict[str, str] = {}
    for category in categories:
        best: tuple[float, str] | None = None
        if profiles is not None:
            for spec in catalog.experts:
                score = profiles.categories.get(spec.name, {}).get(category)
                if score is None:
                    continue
                value = score - cost_weight * spec.cost
                if best is None or value > best[0]:
                    best = (value, spec.name)
        if best is not None:
            out[category] = best[1]
        else:
            declared = catalog.experts_for(category)
            out[category] = declared[0].name if declared else catalog.generalist.name
    return out


class CategoryRouter:
    """Classifier + category-to-expert map + generalist fallback (see module doc).

    Options: ``artifact`` (required), ``threshold`` (default: the artifact's calibrated
    fallback), ``profiles``, ``cost_weight``, ``switch_confidence``, ``encoder``.
    """

    name = "category"

    def __init__(self, catalog: Catalog, options: Mapping[str, Any]) -> None:
        check_options(self.name, options, {"_artifact"})
        self.core = TrainedCore(self.name, options)
        self.labels = self.core.artifact.labels
        self.generalist = catalog.generalist.name
        self.expert_of = category_expert_map(
            catalog, self.labels, self.core.profiles, self.core.cost_weight
        )
        self.experts = list(dict.fromkeys(self.expert_of.values()))

    async def route(self, messages: Sequence[ChatMessage]) -> RoutingDecision:
        """Classify the latest turn (with the conversation as context) and map it."""
        latest, context = await self.core.embed_conversation(messages)
        rows = latest[None] if context is None else np.stack([latest, context])
        proba = self.core.artifact.category_proba(rows)
        mixed = blend(
            proba[0],
            proba[1] if context is not None else None,
            self.core.switch_confidence,
            follow_up=self.core.follow_up(messages),
        )
        category = self.labels[mixed.choice]
        confidence = round(mixed.confidence, 4)
        per_expert = expert_scores_from_categories(
            mixed.scores, self.labels, self.expert_of, self.experts
        )
        if confidence < self.core.threshold:
            expert = self.generalist
            reason = (
                f"best category {category!r} at {confidence:.2f} is below the "
                f"{self.core.threshold:.2f} threshold; the generalist answers"
            )
        else:
            expert = self.expert_of[category]
            reason = f"classified {category!r} ({confidence:.2f})"
        if self.core.artifact.flags_not_english(latest):
            reason += "; not in English, so the traffic prior weighs more"
        if mixed.sticky:
            reason += "; kept the conversation's topic"
        elif mixed.switched:
            reason += "; the latest turn clearly changed topic"
        return RoutingDecision(
            expert=expert,
            category=category,
            confidence=confidence,
            strategy=self.name,
            alternatives=ranked_alternatives(self.experts, per_expert, expert),
            reason=reason,
        )


ROUTER_CLS["category"] = CategoryRouter
