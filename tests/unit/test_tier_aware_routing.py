"""Tier-aware routing: an awake expert may beat a sleeping best one when the gap is small."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from coe_router.routing.base import Candidate, RoutingDecision
from coe_router.routing.tier_aware import prefer_awake
from tests.unit.tier_fakes import Build, Gateway, chat, content_of, rep, start_gateway, wake_ups

WAKE_S = {"cold": 30.0, "warm": 0.5, "hot": 0.0}


def decision(expert: str, confidence: float, *alts: tuple[str, float]) -> RoutingDecision:
    return RoutingDecision(
        expert=expert, category=expert, confidence=confidence, strategy="keyword",
        alternatives=tuple(Candidate(n, s) for n, s in alts), reason="2 keyword hits",
    )  # fmt: skip


def wake_s(expert: str) -> float:
    return WAKE_S[expert]


# --- prefer_awake -------------------------------------------------------------------------


def test_an_awake_alternative_wins_when_the_gap_is_small() -> None:
    d = decision("cold", 0.50, ("hot", 0.45))
    out = prefer_awake(d, wake_s, weight=0.01)  # cold: 0.50 - 0.30 < hot: 0.45
    assert out.expert == "hot"
    assert out.confidence == 0.45
    assert out.alternatives == (Candidate("cold", 0.50),)
    assert out.reason is not None
    assert out.reason.startswith("tier-aware: 'hot' is ready now; 'cold' would need about 30.0 s")
    assert "2 keyword hits" in out.reason
    assert (out.category, out.strategy) == (d.category, d.strategy)


def test_the_best_expert_stays_when_the_gap_is_large() -> None:
    d = decision("cold", 0.90, ("hot", 0.45))
    assert prefer_awake(d, wake_s, weight=0.01) is d  # 0.60 > 0.45


def test_weight_zero_routes_on_quality_alone() -> None:
    d = decision("cold", 0.01, ("hot", 0.99))
    assert prefer_awake(d, wake_s, weight=0.0) is d


def test_no_alternatives_no_change() -> None:
    d = decision("cold", 0.1)
    assert prefer_awake(d, wake_s, weight=10.0) is d


def test_a_tie_keeps_the_routers_choice() -> None:
    d = decision("hot", 0.5, ("warm", 0.5))
    assert prefer_awake(d, wake_s, weight=0.0001) is d


def test_a_warm_expert_can_beat_a_cold_one_and_lose_to_a_hot_one() -> None:
    d = decision("cold", 0.60, ("warm", 0.55), ("hot", 0.20))
    out = prefer_awake(d, wake_s, weight=0.01)  # 0.30 / 0.545 / 0.20
    assert out.expert == "warm"
    assert out.alternatives == (Candidate("cold", 0.60), Candidate("hot", 0.20))
    d = decision("cold", 0.60, ("warm", 0.55), ("hot", 0.54))
    assert prefer_awake(d, wake_s, weight=0.1).expert == "hot"  # 0.55 - 0.05 < 0.54


# --- through the gateway ------------------------------------------------------------------


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[Build]:
    async with AsyncExitStack() as stack:
        yield functools.partial(start_gateway, stack, tmp_path)


#: "a" (asleep at start: cold, about 30 s by default) vs "b" (awake); "alpha first" gives
#: a: 0.5, b: 0.167 (gap 0.33); "alpha first third" gives a: 0.656, b: 0.125 (gap 0.53).
KEYWORDS = {"a": ["alpha", "first", "third"], "b": ["beta"]}
SMALL_GAP = "alpha first beta"
LARGE_GAP = "alpha first third beta"


async def answered_by(gw: Gateway, body: dict[str, Any], expert: str) -> httpx.Response:
    """Send ``body``; ``expert`` must have answered it (its header and its text)."""
    resp = await gw.client.post("/v1/chat/completions", json=body)
    assert content_of(resp) == f"{expert} says hi"
    assert resp.headers["x-coe-expert"] == expert
    return resp


async def test_gateway_prefers_the_awake_expert_when_the_gap_is_small(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b")], awake=("b",), keywords=KEYWORDS,
                            wake_cost_weight=0.015)  # penalty for "a": 0.45  # fmt: skip
    resp = await answered_by(gw, chat("coe", SMALL_GAP), "b")
    coe = resp.json()["coe"]
    assert coe["expert"] == "b"
    assert coe["reason"].startswith("tier-aware: 'b' is ready now; 'a' would need about 30.0 s")
    assert coe["alternatives"][0] == {"expert": "a", "score": 0.5}
    assert wake_ups(gw.replica("a")) == []  # nothing woken


async def test_gateway_wakes_the_best_expert_when_the_gap_is_large(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b")], awake=("b",), keywords=KEYWORDS,
                            wake_cost_weight=0.015)  # fmt: skip
    resp = await answered_by(gw, chat("coe", LARGE_GAP), "a")
    assert not resp.json()["coe"]["reason"].startswith("tier-aware")
    assert len(wake_ups(gw.replica("a"))) == 3


async def test_gateway_weight_zero_routes_on_quality(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b")], awake=("b",), keywords=KEYWORDS)
    resp = await answered_by(gw, chat("coe", SMALL_GAP), "a")
    assert resp.json()["coe"]["reason"] == "2 weighted keyword hit(s) for 'a'"


async def test_once_awake_the_best_expert_is_chosen_again(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a", wake_s=0.001), rep("b")], awake=("b",),
                            keywords=KEYWORDS, wake_cost_weight=0.015)  # fmt: skip
    await gw.client.post("/v1/chat/completions", json=chat("a"))  # direct: wakes "a"
    resp = await gw.client.post("/v1/chat/completions", json=chat("coe", SMALL_GAP))
    assert resp.headers["x-coe-expert"] == "a"


async def test_direct_requests_are_not_rerouted(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b")], awake=("b",), keywords=KEYWORDS,
                            wake_cost_weight=100.0)  # fmt: skip
    resp = await gw.client.post("/v1/chat/completions", json=chat("a", SMALL_GAP))
    assert content_of(resp) == "a says hi"
    assert resp.headers["x-coe-strategy"] == "direct"
