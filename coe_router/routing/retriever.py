"""RouterRetriever routing: each expert is a set of pilot embeddings; nearest expert wins.

An expert's pilots are centroids of the prompts it does best on: from ``pilots``
(an ``.npz`` of expert name -> ``(k, D)`` rows, written by ``router_training profile``),
else the artifact's category centroids for the categories the catalog says it covers.
The score of an expert is its best cosine similarity to the request; a softmax with a
small temperature turns scores into a confidence. Adding or removing an expert is a
catalog (or pilots) change, or :meth:`RetrieverRouter.add_expert` at run time: nothing
is retrained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coe_router.catalog import Catalog
from coe_router.errors import ConfigError
from coe_router.protocol import ChatMessage
from coe_router.routing.artifact import Array, softmax
from coe_router.routing.base import ROUTER_CLS, RoutingDecision
from coe_router.routing.context import blend
from coe_router.routing.encoder import normalize
from coe_router.routing.trained import (
    TrainedCore,
    check_options,
    number,
    ranked_alternatives,
    resolve_path,
)


class RetrieverRouter:
    """Cosine similarity to per-expert pilot embeddings (see module doc).

    Options: ``artifact`` (required), ``pilots`` (``.npz``), ``temperature`` (softmax over
    similarities, default 0.05), ``threshold``, ``switch_confidence``, ``encoder``.
    """

    name = "retriever"

    def __init__(self, catalog: Catalog, options: Mapping[str, Any]) -> None:
        check_options(self.name, options, {"_artifact", "pilots", "temperature"})
        self.core = TrainedCore(self.name, options, lexical=False)
        self.temperature = number(options, "temperature", 0.05, 1e-4, 10.0)
        self.generalist = catalog.generalist.name
        labels = self.core.artifact.labels
        centroids = self.core.artifact.arrays["category_centroids"]
        self._category_rows = {label: centroids[i] for i, label in enumerate(labels)}
        self.pilots: dict[str, Array] = {}
        for spec in catalog.experts:
            rows = [self._category_rows[c] for c in spec.categories if c in self._category_rows]
            if rows:
                self.pilots[spec.name] = np.stack(rows)
        if options.get("pilots"):
            path = resolve_path(str(options["pilots"]), "retriever router: pilots")
            with np.load(path, allow_pickle=False) as npz:
                for name in npz.files:
                    if catalog.expert(name) is not None:  # pilots of experts no longer served
                        self.add_expert(name, np.asarray(npz[name], dtype=np.float32))
        if not self.pilots:
            raise ConfigError("retriever router: no expert has pilots (categories or pilots file)")

    def add_expert(self, name: str, pilots: Array) -> None:
        """Serve ``name`` from now on, represented by ``pilots`` (``(D,)`` or ``(k, D)``)."""
        rows = np.atleast_2d(np.asarray(pilots, dtype=np.float32))
        dim = self.core.encoder.dim
        if rows.shape[1] != dim:
            raise ConfigError(f"retriever router: pilots for {name!r} are not {dim}-d")
        self.pilots[name] = normalize(rows)

    def remove_expert(self, name: str) -> None:
        """Stop routing to ``name``."""
        self.pilots.pop(name, None)

    def similarities(self, rows: Array) -> tuple[list[str], Array]:
        """Expert names and, per row, each expert's best cosine similarity."""
        names = list(self.pilots)
        sims = np.stack([(rows @ self.pilots[n].T).max(axis=-1) for n in names], axis=-1)
        return names, sims.astype(np.float32)

    async def route(self, messages: Sequence[ChatMessage]) -> RoutingDecision:
        """Nearest expert to the latest turn, the conversation's expert unless clearly not."""
        latest, context = await self.core.embed_conversation(messages)
        rows = latest[None] if context is None else np.stack([latest, context])
        names, sims = self.similarities(rows)
        proba = softmax(sims / self.temperature)
        mixed = blend(
            proba[0],
            proba[1] if context is not None else None,
            self.core.switch_confidence,
            follow_up=self.core.follow_up(messages),
        )
        best = names[mixed.choice]
        confidence = round(mixed.confidence, 4)
        nearest = max(self._category_rows, key=lambda c: float(latest @ self._category_rows[c]))
        if confidence < self.core.threshold:
            expert, reason = (
                self.generalist,
                (
                    f"nearest expert {best!r} at {confidence:.2f} is below the "
                    f"{self.core.threshold:.2f} threshold; the generalist answers"
                ),
            )
        else:
            expert = best
            reason = f"nearest pilots: {best!r} (cosine {float(sims[0][mixed.choice]):.2f})"
        return RoutingDecision(
            expert=expert,
            category=nearest,
            confidence=confidence,
            strategy=self.name,
            alternatives=ranked_alternatives(names, mixed.scores, expert),
            reason=reason,
        )


ROUTER_CLS["retriever"] = RetrieverRouter
