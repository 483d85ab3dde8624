"""Tier-aware routing: a slightly weaker expert that is awake may beat a sleeping best one.

The router ranks experts by expected quality (the decision's confidence and its
alternatives' scores, on one scale); the pool knows how long each would take to
wake. With ``weight`` w the effective score is ``quality - w * wake_seconds``;
w = 0 routes on quality alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from coe_router.routing.base import Candidate, RoutingDecision


def prefer_awake(
    decision: RoutingDecision, wake_s: Callable[[str], float], weight: float
) -> RoutingDecision:
    """The decision, re-ranked by ``quality - weight * wake_s(expert)``."""
    if weight <= 0 or not decision.alternatives:
        return decision
    quality = {decision.expert: decision.confidence}
    for alt in decision.alternatives:
        quality[alt.expert] = max(quality.get(alt.expert, 0.0), alt.score)
    effective = {name: q - weight * wake_s(name) for name, q in quality.items()}
    best = max(effective, key=lambda name: (effective[name], name == decision.expert))
    if best == decision.expert:
        return decision
    demoted = Candidate(decision.expert, decision.confidence)
    return replace(
        decision,
        expert=best,
        confidence=quality[best],
        alternatives=(demoted, *(a for a in decision.alternatives if a.expert != best)),
        reason=(
            f"tier-aware: {best!r} is ready now; {decision.expert!r} would need about "
            f"{wake_s(decision.expert):.1f} s to wake ({decision.reason or 'router choice'})"
        ),
    )
