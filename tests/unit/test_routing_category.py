"""The CoE category router: classifier, category -> expert map, fallback, conversations."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from coe_router.errors import ConfigError
from coe_router.routing import ROUTER_CLS
from coe_router.routing.artifact import ExpertProfiles
from coe_router.routing.category import CategoryRouter, category_expert_map
from tests.unit.test_routing_support import FakeEncoder, catalog, fitted, user


def router(**options: object) -> tuple[CategoryRouter, FakeEncoder]:
    enc = FakeEncoder()
    art = fitted(enc)
    opts = {"_artifact": art, "encoder": enc, "threshold": 0.3, **options}
    return CategoryRouter(catalog(), opts), enc


async def test_routes_each_category_to_its_expert() -> None:
    r, _ = router()
    d = await r.route(user("my python function has a bug in the loop"))
    assert (d.expert, d.category, d.strategy) == ("coder", "code", "category")
    assert d.confidence > 0.5
    assert next(a.expert for a in d.alternatives) != "coder"
    d = await r.route(user("solve this integral equation"))
    assert (d.expert, d.category) == ("mathy", "math")


async def test_low_confidence_falls_back_to_the_generalist() -> None:
    r, _ = router(threshold=0.999)
    d = await r.route(user("python poem"))
    assert d.expert == "general"
    assert "below" in (d.reason or "")


async def test_conversation_stays_with_its_expert_on_a_vague_follow_up() -> None:
    r, _ = router()
    convo = user("my python function has a bug in the loop", "thanks, can you also do it")
    d = await r.route(convo)
    assert d.expert == "coder"
    assert "kept the conversation" in (d.reason or "")


async def test_conversation_moves_when_the_new_turn_clearly_belongs_elsewhere() -> None:
    r, _ = router(switch_confidence=0.6)
    d = await r.route(user("python function bug loop", "write a poem essay story with rhyme"))
    assert d.expert == "writer"
    assert "changed topic" in (d.reason or "")


async def test_encoder_runs_off_the_event_loop() -> None:
    r, enc = router()
    enc.threads.clear()  # fitting called it directly
    await r.route(user("python bug"))
    assert enc.threads
    assert all(t != threading.main_thread().name for t in enc.threads)


async def test_repeated_context_is_served_from_the_cache() -> None:
    r, enc = router()
    await r.route(user("python bug"))
    calls = enc.calls
    await r.route(user("python bug"))
    assert enc.calls == calls


async def test_concurrent_routes_all_answer() -> None:
    r, _ = router()
    out = await asyncio.gather(*(r.route(user(f"python bug {i}")) for i in range(20)))
    assert {d.expert for d in out} == {"coder"}


def test_profiles_pick_the_best_expert_net_of_cost() -> None:
    profiles = ExpertProfiles.from_dict(
        {
            "experts": {
                "general": {"categories": {"code": {"score": 0.55}}},
                "coder": {"categories": {"code": {"score": 0.8}}},
            }
        }
    )
    cat = catalog()
    assert category_expert_map(cat, ["code"], profiles, 0.0)["code"] == "coder"
    # coder costs 3, general 1: at 0.2 per unit of cost, 0.8-0.6 < 0.55-0.2.
    assert category_expert_map(cat, ["code"], profiles, 0.2)["code"] == "general"
    # No profile for "writing": the catalog's declaration decides.
    assert category_expert_map(cat, ["writing"], profiles)["writing"] == "writer"
    assert category_expert_map(cat, ["law"])["law"] == "general"


def test_registered_and_unknown_options_rejected(tmp_path: Path) -> None:
    assert ROUTER_CLS["category"] is CategoryRouter
    with pytest.raises(ConfigError, match="unknown options"):
        CategoryRouter(catalog(), {"artifact": str(tmp_path), "bogus": 1})
    with pytest.raises(ConfigError, match="'artifact'"):
        CategoryRouter(catalog(), {})
    with pytest.raises(ConfigError, match="does not exist"):
        CategoryRouter(catalog(), {"artifact": str(tmp_path / "nope")})


def test_encoder_dimension_must_match_the_artifact() -> None:
    art = fitted()
    with pytest.raises(ConfigError, match="256-d"):
        CategoryRouter(catalog(), {"_artifact": art, "encoder": FakeEncoder(dim=32)})


def test_saved_artifact_loads_by_path(tmp_path: Path) -> None:
    enc = FakeEncoder()
    fitted(enc).save(tmp_path / "art")
    r = CategoryRouter(catalog(), {"artifact": str(tmp_path / "art"), "encoder": enc})
    d = asyncio.run(r.route(user("derivative of a prime number sum")))
    assert d.category == "math"
