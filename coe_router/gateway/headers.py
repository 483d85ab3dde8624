"""The ``x-coe-*`` response headers and the ``coe`` object: what a routed answer says."""

from __future__ import annotations

from coe_router.protocol import CoEInfo, RouteCandidate
from coe_router.routing.base import RoutingDecision


def routing_headers(decision: RoutingDecision) -> dict[str, str]:
    """``x-coe-expert``, ``-category``, ``-confidence`` and ``-strategy`` of a decision."""
    return {
        "x-coe-expert": decision.expert,
        "x-coe-category": decision.category or "",
        "x-coe-confidence": f"{decision.confidence:.4f}",
        "x-coe-strategy": decision.strategy,
    }


def candidates(decision: RoutingDecision) -> list[RouteCandidate]:
    """The decision's alternatives, best first, as the API reports them."""
    return [RouteCandidate(expert=c.expert, score=c.score) for c in decision.alternatives]


def coe_info(decision: RoutingDecision, model: str) -> CoEInfo:
    """The ``coe`` object of a single-expert answer."""
    return CoEInfo(
        expert=decision.expert,
        category=decision.category,
        confidence=decision.confidence,
        strategy=decision.strategy,
        virtual_model=model if decision.strategy != "direct" else None,
        alternatives=candidates(decision),
        reason=decision.reason,
    )
