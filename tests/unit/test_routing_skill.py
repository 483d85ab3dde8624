"""Symbolic-MoE skills: multi-label detection, top-k recruitment, aggregator choice."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(("items", "expert"), [(1, "coder"), (40, "general")])
async def test_a_skill_measured_on_few_items_leans_on_its_category(
    tmp_path: Path, items: int, expert: str
) -> None:
    # The coder failed every code-skill item: once is noise against its category's 0.8,
    # forty times is evidence that outweighs it.
    (tmp_path / "profiles.json").write_text(
        json.dumps(
            {
                "experts": {
                    "general": {"categories": {"code": {"score": 0.3, "n": 30}}},
                    "coder": {
                        "categories": {"code": {"score": 0.8, "n": 30}},
                        "skills": {"code-skill": {"score": 0.0, "n": items}},
                    },
                }
            }
        )
    )
    router = make(profiles=str(tmp_path / "profiles.json"))
    assert (await router.recruit(user("python bug compile"))).experts[0].expert == expert


_ENCODER = FakeEncoder()
_ARTIFACT = fitted(_ENCODER)


def _coder_code_skill(skill: float, category: float, items: int) -> float:
    """The coder's profile on ``code-skill`` measured as ``skill`` on ``items`` items,
    its ``code`` category as ``category``."""
    coder = {
        "categories": {"code": {"score": category, "n": 30}},
        "skills": {"code-skill": {"score": skill, "n": items}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.json"
        path.write_text(json.dumps({"experts": {"coder": coder}}))
        router = SkillRouter(
            catalog(), {"_artifact": _ARTIFACT, "encoder": _ENCODER, "profiles": str(path)}
        )
    return float(router.profile[router.experts.index("coder"), router.skills.index("code-skill")])


@settings(max_examples=15, deadline=None)
@given(skill=st.floats(0, 1), category=st.floats(0, 1), items=st.integers(1, 10_000))
def test_a_shrunk_skill_lies_between_its_measure_and_its_category(
    skill: float, category: float, items: int
) -> None:
    few, many = (
        _coder_code_skill(skill, category, items),
        _coder_code_skill(skill, category, items + 1),
    )
    assert min(skill, category) - 1e-6 <= few <= max(skill, category) + 1e-6
    # More items move it toward the skill's own measure, never away.
    assert abs(many - skill) <= abs(few - skill) + 1e-6


def test_fixed_aggregator_must_be_an_expert() -> None:
    assert make(aggregator="general").choose_aggregator([]) == "general"
    with pytest.raises(ConfigError, match="aggregator"):
        make(aggregator="nobody")
