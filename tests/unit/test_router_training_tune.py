"""``router_training.tune``: folds by conversation, and cross-validation that learns."""

from __future__ import annotations

import numpy as np

from router_training.data import Example
from router_training.taxonomy import CATEGORIES
from router_training.tune import conversation_folds, cross_validate


def read(cid: str, category: str = "code") -> Example:
    return Example(cid, category, source="sharegpt-read", extra={"id": cid})


def test_parts_of_one_conversation_share_a_fold_and_other_sources_always_train() -> None:
    rows = [read(f"conv{i}_{part}") for i in range(40) for part in (0, 3, 17)]
    rows.append(Example("What is 2 + 2?", "math", source="gsm8k"))
    folds = conversation_folds(rows, 5)
    assert folds[-1] == -1
    for i in range(40):
        assert len({int(f) for f in folds[3 * i : 3 * i + 3]}) == 1
    assert set(folds[:-1].tolist()) == set(range(5))  # 40 conversations fill every fold
    assert np.array_equal(folds, conversation_folds(rows, 5))  # the same on every run


def test_cross_validation_learns_a_signal_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    cats = ["code", "writing", "general", "math"]
    labels = [cats[i % 4] for i in range(400)]
    centers = rng.standard_normal((len(CATEGORIES), 16)) * 3
    signal = np.array([centers[CATEGORIES.index(c)] for c in labels]) + rng.standard_normal(
        (400, 16)
    )
    rows = [read(f"c{i}_0", c) for i, c in enumerate(labels)]
    accuracies, macro = cross_validate(rows, signal.astype(np.float32), c=1.0, weight=3.0)
    assert len(accuracies) == 5
    assert min(accuracies) > 0.9
    assert macro > 0.9
    noise = rng.standard_normal((400, 16)).astype(np.float32)
    accuracies, macro = cross_validate(rows, noise, c=1.0, weight=3.0)
    assert np.mean(accuracies) < 0.45
    assert macro < 0.45
