"""What a synthesis request asked for, and which experts answer it.

Switched on per virtual model (catalog ``synthesis:``) or per request
(``coe: {"synthesis": true, "k": 3, "aggregator": "...", "strategy": "..."}``).
:func:`plan_synthesis` checks the request against the limits (400 on bad values);
:func:`recruit` picks the panel: a :class:`~coe_router.routing.base.Recruiter` router
recruits by skill, any other router's decision and alternatives rank the experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coe_router.catalog import Catalog, SynthesisSpec
from coe_router.config import SynthesisSettings
from coe_router.errors import InvalidRequest
from coe_router.experts.expert import ExpertClient
from coe_router.protocol import AggregationStrategy, ChatCompletionRequest
from coe_router.routing.base import Recruiter, Router, RoutingDecision


@dataclass(frozen=True)
class SynthesisPlan:
    """What a synthesis request asked for, checked against the limits."""

    k: int
    strategy: AggregationStrategy
    aggregator: str | None


def plan_synthesis(
    req: ChatCompletionRequest, catalog: Catalog, limits: SynthesisSettings
) -> SynthesisPlan | None:
    """The plan when the request (or its virtual model) wants synthesis; 400 on bad values."""
    opts = req.coe
    vm = catalog.virtual_model(req.model)
    wanted = (
        opts.synthesis
        if opts is not None and opts.synthesis is not None
        else (vm is not None and vm.synthesis is not None)
    )
    if not wanted:
        return None
    if vm is None:
        raise InvalidRequest(
            "Synthesis needs a virtual model (e.g. 'coe'), not a single expert.", param="model"
        )
    if req.n is not None and req.n > 1:  # one merged answer; n answers would need n panels
        raise InvalidRequest("Synthesis answers with one choice: 'n' must be 1.", param="n")
    spec = vm.synthesis or SynthesisSpec()
    most = min(limits.max_k, len(catalog.experts))
    asked = opts.k if opts is not None else None
    if asked is not None and asked > most:
        raise InvalidRequest(
            f"'coe.k' must be at most {most}.", param="coe.k", code="invalid_value"
        )
    # Defaults (the virtual model's, then the settings') are capped at what there is.
    k = asked or min(spec.k or limits.default_k, most)
    aggregator = (opts.aggregator if opts else None) or spec.aggregator
    if aggregator is not None and catalog.expert(aggregator) is None:
        raise InvalidRequest(
            f"'coe.aggregator' must be an expert; '{aggregator}' is not.",
            param="coe.aggregator", code="invalid_value",
        )  # fmt: skip
    strategy = (opts.strategy if opts else None) or spec.strategy or limits.default_strategy
    return SynthesisPlan(k=k, strategy=strategy, aggregator=aggregator)


async def recruit(
    router: Router,
    req: ChatCompletionRequest,
    decision: RoutingDecision,
    k: int,
    experts: Mapping[str, ExpertClient],
) -> tuple[list[tuple[ExpertClient, float]], str | None]:
    """The k experts to ask (best first, no duplicates) and the router's aggregator, if any.

    ``experts`` are the pool's clients in catalog order; they fill the panel up to ``k``.
    """
    suggested: str | None = None
    if isinstance(router, Recruiter):  # Symbolic-MoE routers recruit by skill
        rec = await router.recruit(req.messages, k)
        ranked = [(c.expert, c.score) for c in rec.experts]
        suggested = rec.aggregator
    else:
        ranked = [(decision.expert, decision.confidence)]
        ranked += [(c.expert, c.score) for c in decision.alternatives]
    ranked += [(name, 0.0) for name in experts]  # fill up to k
    chosen: dict[str, float] = {}
    for name, score in ranked:
        if name not in chosen and name in experts:
            chosen[name] = score
        if len(chosen) == k:
            break
    return [(experts[name], score) for name, score in chosen.items()], suggested
