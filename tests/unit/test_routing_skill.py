"""Symbolic-MoE skills: multi-label detection, top-k recruitment, aggregator choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coe_router.errors import ConfigError
from coe_router.routing.skill import SkillRouter
from tests.unit.test_routing_support import FakeEncoder, catalog, fitted, user


def make(**options: object) -> SkillRouter:
    enc = FakeEncoder()
    return SkillRouter(catalog(), {"_artifact": fitted(enc), "encoder": enc, **options})


async def test_recruits_top_k_best_first_with_an_aggregator() -> None:
    r = make(top_k=2)
    rec = await r.recruit(user("python function with an integral equation"))
    assert len(rec.experts) == 2
    assert {c.expert for c in rec.experts} == {"coder", "mathy"}
    assert rec.experts[0].score >= rec.experts[1].score
    assert rec.aggregator == rec.experts[0].expert
    assert rec.skills[0][0] in {"code-skill", "math-skill"}


async def test_k_from_the_request_overrides_the_config() -> None:
    r = make(top_k=1)
    assert len((await r.recruit(user("python bug"), k=3)).experts) == 3


async def test_route_answers_with_the_best_and_lists_the_other_recruits() -> None:
    r = make(top_k=3)
    d = await r.route(user("a poem and an essay with rhyme"))
    assert (d.expert, d.strategy) == ("writer", "skill")
    assert len(d.alternatives) == 2
    assert [a.score for a in d.alternatives] == sorted(
        (a.score for a in d.alternatives), reverse=True
    )


async def test_measured_skill_profiles_override_the_catalog(tmp_path: Path) -> None:
    (tmp_path / "profiles.json").write_text(
        json.dumps(
            {
                "experts": {
                    "general": {"skills": {"code-skill": {"score": 0.9, "n": 10}}},
                    "coder": {"skills": {"code-skill": {"score": 0.1, "n": 10}}},
                }
            }
        )
    )
    assert (await make().route(user("python bug compile"))).expert == "coder"
    measured = make(profiles=str(tmp_path / "profiles.json"))
    assert (await measured.route(user("python bug compile"))).expert == "general"


def test_fixed_aggregator_must_be_an_expert() -> None:
    assert make(aggregator="general").choose_aggregator([]) == "general"
    with pytest.raises(ConfigError, match="aggregator"):
        make(aggregator="nobody")
