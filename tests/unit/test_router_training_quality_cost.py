"""The quality-vs-cost table of `evaluate`: measured seconds and the dominance check."""

from __future__ import annotations

from coe_router.routing.artifact import ExpertProfiles
from coe_router.routing.base import RoutingDecision
from router_training.data import Example
from router_training.evaluate import dominating, quality_cost
from tests.unit.test_routing_support import catalog

EXPERTS = ("general", "coder", "mathy", "writer")


def decision(expert: str) -> RoutingDecision:
    return RoutingDecision(expert=expert, category=None, confidence=1.0, strategy="test")


def test_table_has_measured_seconds_when_profiles_have_them() -> None:
    examples = [
        Example("a", "code", scores={"general": 0.0, "coder": 1.0, "mathy": 0.0, "writer": 0.0}),
        Example("b", "general", scores={"general": 1.0, "coder": 1.0, "mathy": 0.0, "writer": 0.0}),
    ]
    profiles = ExpertProfiles.from_dict(
        {
            "experts": {
                e: {"categories": {}, "seconds_per_request": s}
                for e, s in zip(EXPERTS, (1.0, 4.0, 2.0, 1.0), strict=True)
            }
        }
    )
    table = quality_cost(examples, [decision("coder"), decision("general")], catalog(), profiles)
    rows = {r["system"]: r for r in table}
    assert rows["routed"] == {
        "system": "routed",
        "quality": 1.0,
        "cost": 2.0,
        "n": 2,
        "seconds": 2.5,
    }
    assert rows["coder"]["seconds"] == 4.0
    # The oracle takes the cheapest of tied experts: general on "b".
    assert rows["oracle"]["cost"] == 2.0
    assert dominating(table) == []
    # Without profiles there is no measured column.
    assert "seconds" not in quality_cost(examples, [decision("coder")] * 2, catalog(), None)[0]


def test_dominating_names_experts_no_worse_on_both_axes() -> None:
    table = [
        {"system": "routed", "quality": 0.5, "cost": 2.0, "seconds": 3.0},
        {"system": "routed w=0", "quality": 0.9, "cost": 1.0, "seconds": 1.0},
        {"system": "cheap", "quality": 0.5, "cost": 1.0, "seconds": 4.0},
        {"system": "good", "quality": 0.6, "cost": 3.0, "seconds": 3.0},
        {"system": "same", "quality": 0.5, "cost": 2.0, "seconds": 3.0},
        {"system": "oracle", "quality": 1.0, "cost": 1.0, "seconds": 1.0},
    ]
    # "cheap" ties on quality and is cheaper in catalog cost (not in seconds); "good" is
    # better at the same measured seconds; "same" ties on everything; other routed rows
    # and the oracle are not single experts.
    assert dominating(table) == ["cheap (cost)", "good (seconds)"]
    assert dominating(table, "absent") == []
