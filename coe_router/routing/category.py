"""CoE category routing: classify the request, then map its category to an expert.

Step one is a calibrated classifier over sentence embeddings (the artifact); step two
is a table from category to expert. With expert profiles the table takes, per
category, the expert with the best measured quality net of ``cost_weight * cost``;
without them, the cheapest expert that declares the category in the catalog. When
the classifier is not confident enough (below ``threshold``) the catalog's generalist
answers: a wrong specialist is worse than a decent generalist.

With ``second_reader`` (a :mod:`~coe_router.routing.second_reader` directory) the router is
a cascade: when the fast classifier's confidence in the latest turn is below
``escalate_below`` (default: the reader's own), the fine-tuned transformer reads that turn
too and the two are blended, ``log p = log p_fast + weight * log p_second``. Confident
turns pay nothing more; unsure ones pay the transformer (milliseconds, off the loop, in a
worker thread of its own so that they never hold up another router's decisions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coe_router.catalog import Catalog
from coe_router.errors import ConfigError
from coe_router.protocol import ChatMessage
from coe_router.routing.artifact import Array, ExpertProfiles, softmax
from coe_router.routing.base import ROUTER_CLS, RoutingDecision
from coe_router.routing.context import blend, split_turns
from coe_router.routing.embedder import AsyncEmbedder
from coe_router.routing.second_reader import load_second_reader
from coe_router.routing.trained import (
    TrainedCore,
    check_options,
    expert_scores_from_categories,
    number,
    ranked_alternatives,
    resolve_path,
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
    fallback), ``profiles``, ``cost_weight``, ``switch_confidence``, ``encoder``,
    ``second_reader`` and ``escalate_below`` (the cascade).
    """

    name = "category"

    def __init__(self, catalog: Catalog, options: Mapping[str, Any]) -> None:
        check_options(self.name, options, {"_artifact", "second_reader", "escalate_below"})
        self.core = TrainedCore(self.name, options)
        self.labels = self.core.artifact.labels
        self.second: AsyncEmbedder | None = None
        self.second_weight = 0.0
        self.escalate_below = 0.0
        if options.get("second_reader"):
            path = resolve_path(str(options["second_reader"]), "category router: second_reader")
            reader = load_second_reader(path)
            if list(reader.labels) != list(self.labels):
                raise ConfigError(
                    f"category router: second reader {path} labels {list(reader.labels)}, "
                    f"the artifact {list(self.labels)}"
                )
            self.second = AsyncEmbedder(reader, pool="second-reader")
            self.second_weight = reader.weight
            # Up to 1.0: always ask (a confidence is never above 1).
            self.escalate_below = number(
                options, "escalate_below", reader.escalate_below, 0.0, 1.0 + 1e-9
            )
        elif "escalate_below" in options:
            raise ConfigError("category router: escalate_below needs a second_reader")
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
        fast_confidence = float(proba[0].max())
        escalated = self.second is not None and fast_confidence < self.escalate_below
        if escalated:
            proba[0] = await self._read_again(messages, proba[0])
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
        if escalated:
            reason += f"; the fast reading was unsure ({fast_confidence:.2f}), read again"
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

    async def _read_again(self, messages: Sequence[ChatMessage], fast: Array) -> Array:
        """The latest turn's probabilities blended with the second reader's."""
        assert self.second is not None
        logits = (await self.second.embed([split_turns(messages).latest]))[0]
        # Floors keep a probability that underflowed to 0 from making the sum -inf or NaN.
        log_second = np.log(np.maximum(softmax(logits[None])[0], 1e-30))
        log_fast = np.log(np.maximum(fast, 1e-30))
        blended: Array = softmax((log_fast + self.second_weight * log_second)[None])[0]
        return blended


ROUTER_CLS["category"] = CategoryRouter
