"""The embedded default catalog routes with the measured expert profiles: `coe` derives its
category -> expert map from deploy/routers/default/profiles.json under its cost weight, and
`coe-retriever` reads the pilots that `profile` wrote beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from coe_router.catalog import load_catalog
from coe_router.routing.artifact import ExpertProfiles
from coe_router.routing.base import build_router
from coe_router.routing.category import CategoryRouter, category_expert_map
from coe_router.routing.retriever import RetrieverRouter

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "deploy" / "routers" / "default"


def test_profiles_cover_every_category_for_both_local_experts() -> None:
    raw = json.loads((DEFAULT / "profiles.json").read_text())
    catalog = load_catalog(ROOT / "deploy" / "local.yaml")
    labels = json.loads((DEFAULT / "manifest.json").read_text())["labels"]
    assert set(raw["experts"]) == {e.name for e in catalog.experts}
    for name, prof in raw["experts"].items():
        assert prof["errors"] == 0, name
        assert prof["seconds_per_request"] > 0
        for category in labels:
            assert prof["categories"][category]["n"] >= 8, (name, category)


def test_coe_maps_categories_by_measured_quality_net_of_cost() -> None:
    catalog = load_catalog(ROOT / "deploy" / "local.yaml")
    spec = catalog.virtual_model("coe")
    assert spec is not None
    router = build_router(spec, catalog)
    assert isinstance(router, CategoryRouter)
    weight = float(spec.options["cost_weight"])
    assert weight > 0
    profiles = ExpertProfiles.load(DEFAULT / "profiles.json")
    assert router.core.profiles == profiles
    assert router.expert_of == category_expert_map(catalog, router.labels, profiles, weight)
    cost = {e.name: e.cost for e in catalog.experts}
    for category, chosen in router.expert_of.items():
        net = {e: profiles.categories[e][category] - weight * cost[e] for e in cost}
        assert net[chosen] == max(net.values()), category


def test_coe_retriever_reads_the_profiled_pilots() -> None:
    catalog = load_catalog(ROOT / "deploy" / "local.yaml")
    spec = catalog.virtual_model("coe-retriever")
    assert spec is not None
    router = build_router(spec, catalog)
    assert isinstance(router, RetrieverRouter)
    with np.load(DEFAULT / "pilots.npz") as npz:
        assert set(npz.files) == {e.name for e in catalog.experts}
        for name in npz.files:
            rows = npz[name].astype(np.float32)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            assert np.allclose(router.pilots[name], rows, atol=1e-5)
