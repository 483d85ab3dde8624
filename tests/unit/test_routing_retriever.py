"""RouterRetriever: nearest pilots; experts come and go without retraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coe_router.errors import ConfigError
from coe_router.routing.retriever import RetrieverRouter
from tests.unit.test_routing_support import FakeEncoder, catalog, fitted, user


def make(**options: object) -> tuple[RetrieverRouter, FakeEncoder]:
    enc = FakeEncoder()
    return RetrieverRouter(catalog(), {"_artifact": fitted(enc), "encoder": enc, **options}), enc


async def test_routes_to_the_expert_with_the_nearest_pilots() -> None:
    r, _ = make()
    d = await r.route(user("solve the integral of this equation"))
    assert (d.expert, d.strategy) == ("mathy", "retriever")
    assert d.category == "math"
    scores = [a.score for a in d.alternatives]
    assert scores == sorted(scores, reverse=True)


async def test_add_and_remove_an_expert_without_retraining() -> None:
    r, enc = make()
    coef_before = r.core.artifact.arrays["category_coef"].copy()
    prompt = "sonnet haiku villanelle"
    assert (await r.route(user(prompt))).expert != "poet"
    r.add_expert("poet", enc.encode(["sonnet haiku villanelle limerick", "haiku sonnet"]))
    assert (await r.route(user(prompt))).expert == "poet"
    r.remove_expert("poet")
    assert (await r.route(user(prompt))).expert != "poet"
    assert np.array_equal(coef_before, r.core.artifact.arrays["category_coef"])


async def test_pilots_file_adds_profiled_experts(tmp_path: Path) -> None:
    enc = FakeEncoder()
    np.savez(
        tmp_path / "pilots.npz", writer=enc.encode(["sonnet haiku"]), retired=enc.encode(["python"])
    )
    r = RetrieverRouter(
        catalog(),
        {"_artifact": fitted(enc), "encoder": enc, "pilots": str(tmp_path / "pilots.npz")},
    )
    assert "retired" not in r.pilots  # not in the catalog: ignored
    assert (await r.route(user("sonnet haiku"))).expert == "writer"


async def test_a_removed_catalog_expert_is_never_chosen() -> None:
    r, _ = make()
    r.remove_expert("coder")
    d = await r.route(user("python function bug compile"))
    assert d.expert != "coder"


def test_pilots_of_the_wrong_size_are_rejected() -> None:
    r, _ = make()
    with pytest.raises(ConfigError, match="256-d"):
        r.add_expert("x", np.ones(3, dtype=np.float32))
