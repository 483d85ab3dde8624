"""``router_training.tune``: folds by conversation, and cross-validation that learns."""

from __future__ import annotations

import numpy as np

from router_training.data import Example
from router_training.taxonomy import CATEGORIES
from router_training.tune import (
    NEAR_TIE,
    Scores,
    best_setting,
    conversation_folds,
    cross_validate,
    other_language_strength,
)


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
    [(accuracies, macro, other)] = cross_validate(
        rows, signal.astype(np.float32), 1.0, 3.0
    ).values()
    assert len(accuracies) == 5
    assert min(accuracies) > 0.9
    assert macro > 0.9
    assert other is None  # no rows flagged as not English
    noise = rng.standard_normal((400, 16)).astype(np.float32)
    [(accuracies, macro, _)] = cross_validate(rows, noise, c=1.0, weight=3.0).values()
    assert np.mean(accuracies) < 0.45
    assert macro < 0.45


def test_a_weaker_traffic_prior_recalls_the_rare_category_more() -> None:
    # 90% code, 10% math, overlapping: the full prior pulls doubtful math to code.
    rng = np.random.default_rng(1)
    labels = ["code"] * 360 + ["math"] * 40
    x = np.array([[0.0] if c == "code" else [1.2] for c in labels]) + rng.standard_normal((400, 1))
    rows = [read(f"c{i}_0", c) for i, c in enumerate(labels)]
    got = cross_validate(rows, x.astype(np.float32), 1.0, 1.0, strengths=(0.0, 1.0))
    (acc_none, macro_none, _), (acc_full, macro_full, _) = got[0.0], got[1.0]
    assert macro_none > macro_full + 0.1  # math is found more often without the prior
    assert np.mean(acc_full) > np.mean(acc_none)  # and the traffic's odds are more accurate


def test_best_setting_is_accuracy_first_and_macro_recall_among_near_ties() -> None:
    results: dict[tuple[float, ...], Scores] = {
        (1.0,): Scores([0.80] * 5, 0.40),
        (2.0,): Scores([0.80 - NEAR_TIE / 2] * 5, 0.60),  # a near tie with more macro recall
        (3.0,): Scores([0.80 - 2 * NEAR_TIE] * 5, 0.90),  # clearly less accurate
    }
    assert best_setting(results) == (2.0,)
    del results[(2.0,)]
    assert best_setting(results) == (1.0,)


def test_prompts_whose_features_say_little_are_scored_apart_and_want_more_prior() -> None:
    # 85% code, 15% math. English rows carry a signal; the flagged rows (the encoder's
    # foreign languages) sit between the two, so the traffic's odds are their best guess.
    rng = np.random.default_rng(2)
    labels = ["code"] * 340 + ["math"] * 60
    foreign = rng.random(400) < 0.3
    signal = np.array([[0.0] if c == "code" else [2.5] for c in labels])
    x = np.where(foreign[:, None], 1.25, signal) + rng.standard_normal((400, 1))
    rows = [read(f"c{i}_0", c) for i, c in enumerate(labels)]
    got = cross_validate(
        rows, x.astype(np.float32), 1.0, 1.0, strengths=(0.0, 0.5, 2.0), other=foreign
    )
    scores = {s: r.other for s, r in got.items()}
    assert all(v is not None for v in scores.values())
    assert scores[2.0] > scores[0.0] + 0.2  # class-balanced, noise is a coin toss
    assert other_language_strength(got, chosen=0.0) == 2.0


def test_the_other_language_strength_is_the_most_accurate_and_nearest_among_ties() -> None:
    got = {
        0.25: Scores([0.7], 0.5, 0.60),
        1.0: Scores([0.7], 0.5, 0.80),
        2.0: Scores([0.7], 0.5, 0.80),
    }
    assert other_language_strength(got, chosen=0.25) == 1.0
    assert other_language_strength(got, chosen=3.0) == 2.0
    assert other_language_strength({1.0: Scores([0.7], 0.5)}, chosen=1.0) is None
