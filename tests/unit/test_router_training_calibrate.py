"""Calibrate: per-category offsets hit target traffic shares; fallback share threshold."""

from __future__ import annotations

import numpy as np
import pytest

from router_training.calibrate import assign, fallback_threshold, fit_shares, shares

LABELS = ["code", "math", "general"]
EXPERT_OF = {"code": "coder", "math": "mathy", "general": "general"}


def log_proba(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Skewed traffic: code dominates before calibration.
    logits = rng.normal(size=(n, 3)) + np.array([1.0, 0.0, -0.5])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.log(p).astype(np.float32)


@pytest.mark.parametrize(
    "targets",
    [
        {"coder": 0.2, "mathy": 0.3, "general": 0.5},
        {"coder": 0.6, "mathy": 0.1, "general": 0.3},
    ],
)
def test_shares_hit_the_targets(targets: dict[str, float]) -> None:
    lp = log_proba()
    before = shares(
        sorted(targets), assign(lp, np.zeros(3, np.float32), LABELS, EXPERT_OF, "general", 0.0)
    )
    _, got = fit_shares(lp, LABELS, EXPERT_OF, "general", targets)
    assert any(abs(before[e] - t) > 0.05 for e, t in targets.items())
    for e, t in targets.items():
        assert got[e] == pytest.approx(t, abs=0.015)


def test_shares_hold_on_unseen_traffic_of_the_same_kind() -> None:
    bias, _ = fit_shares(
        log_proba(seed=0),
        LABELS,
        EXPERT_OF,
        "general",
        {"coder": 0.25, "mathy": 0.25, "general": 0.5},
    )
    b = np.array([bias[c] for c in LABELS], dtype=np.float32)
    got = shares(
        ["coder", "mathy", "general"],
        assign(log_proba(seed=1), b, LABELS, EXPERT_OF, "general", 0.0),
    )
    assert got["coder"] == pytest.approx(0.25, abs=0.04)


def test_fallback_share_sets_the_threshold() -> None:
    lp = log_proba()
    t = fallback_threshold(np.exp(lp).max(1), 0.3)
    got = shares(
        ["coder", "mathy", "general"],
        assign(
            lp,
            np.zeros(3, np.float32),
            LABELS,
            {"code": "coder", "math": "mathy", "general": "mathy"},
            "general",
            t,
        ),
    )
    assert got["general"] == pytest.approx(0.3, abs=0.01)


def test_unreachable_expert_is_an_error() -> None:
    with pytest.raises(ValueError, match="no category routes"):
        fit_shares(log_proba(), LABELS, EXPERT_OF, "general", {"lawyer": 1.0})
