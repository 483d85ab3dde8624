"""The artifact format: fit -> save -> load gives the same router; bad artifacts fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coe_router.errors import ConfigError
from coe_router.routing.artifact import RouterArtifact
from router_training.fit import traffic_prior, train_classifier
from tests.unit.test_routing_support import FakeEncoder, fitted, synthetic


def test_round_trip_keeps_probabilities_and_manifest(tmp_path: Path) -> None:
    enc = FakeEncoder()
    art = fitted(enc)
    art.save(tmp_path / "a")
    back = RouterArtifact.load(tmp_path / "a")
    x = enc.encode(["python bug in my loop", "a poem about rain"])
    # float16 storage moves probabilities only slightly.
    assert np.allclose(back.category_proba(x), art.category_proba(x), atol=0.02)
    assert back.labels == ["code", "general", "math", "writing"]
    assert back.skills == ["code-skill", "general-skill", "math-skill", "writing-skill"]
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["format"] == "coe-router/router-artifact"
    assert m["version"] == 1
    assert len(m["data"]["sha256"]) == 64
    assert m["data"]["n"] == len(synthetic())
    assert "numpy" in m["libraries"]
    assert "scikit-learn" in m["libraries"]
    assert m["metrics"]["validation_accuracy"] > 0.9
    assert m["calibration"]["temperature"] > 0


def test_fitted_classifier_separates_the_synthetic_categories() -> None:
    enc = FakeEncoder()
    art = fitted(enc)
    proba = art.category_proba(
        enc.encode(["integral of a derivative equation", "an essay and a poem"])
    )
    assert [art.labels[i] for i in proba.argmax(1)] == ["math", "writing"]


def test_weights_are_small_and_not_pickled(tmp_path: Path) -> None:
    fitted().save(tmp_path)
    with np.load(tmp_path / "weights.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype == np.float16 for k in npz.files)


def test_missing_manifest_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no manifest\.json"):
        RouterArtifact.load(tmp_path)


def test_shape_mismatch_is_caught(tmp_path: Path) -> None:
    art = fitted()
    art.manifest["encoder"]["dim"] = 999
    art.save(tmp_path)
    with pytest.raises(ConfigError, match="category_coef has shape"):
        RouterArtifact.load(tmp_path)


def test_other_format_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="is not a coe-router/router-artifact"):
        RouterArtifact.load(tmp_path)


def test_the_served_classifier_is_refit_on_every_row_after_calibration() -> None:
    enc = FakeEncoder()
    rows = synthetic()
    x = enc.encode([r.prompt for r in rows])
    y = np.array([sorted({r.category for r in rows}).index(r.category) for r in rows])
    refit, split = fitted(enc), fitted(enc, refit=False)
    coef, intercept = train_classifier(x, y, 4, 2.0, 0)
    assert refit.manifest["metrics"]["n_refit"] == len(rows)
    assert np.allclose(refit.arrays["category_coef"], coef, atol=1e-4)
    assert np.allclose(refit.arrays["category_intercept"], intercept, atol=1e-4)
    assert not np.allclose(split.arrays["category_coef"], coef, atol=1e-4)  # 85% of the rows
    # The temperature and the validation metrics come from the split's fit either way.
    assert (
        refit.manifest["metrics"]["validation_accuracy"]
        == (split.manifest["metrics"]["validation_accuracy"])
    )
    assert refit.temperature == split.temperature


def test_prior_strength_scales_the_traffic_prior_in_the_intercepts() -> None:
    arts = {
        s: fitted(fit_skills=False, traffic_prior_source="src-code", prior_strength=s)
        for s in (0.0, 0.5, 1.0)
    }
    prior = traffic_prior(synthetic(), arts[1.0].labels, "src-code")
    assert prior is not None
    base = arts[0.0].arrays["category_intercept"]
    for s in (0.5, 1.0):
        shift = arts[s].arrays["category_intercept"] - base
        assert np.allclose(shift, s * np.log(prior), atol=1e-4)
    assert arts[0.5].manifest["fit"]["traffic_prior"]["strength"] == 0.5
