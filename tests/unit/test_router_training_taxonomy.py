"""The taxonomy: every MMLU subject mapped; the documented rule labels requests."""

from __future__ import annotations

import pytest

from router_training.taxonomy import CATEGORIES, MMLU_CATEGORY, rule_label


def test_all_57_mmlu_subjects_map_into_the_taxonomy() -> None:
    assert len(MMLU_CATEGORY) == 57
    assert set(MMLU_CATEGORY.values()) <= set(CATEGORIES)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("How do I reverse a list in Python?", "code"),
        ("```\nTypeError: x is None\n``` what does this mean", "code"),
        ("Write a cover letter for a nursing job", "writing"),
        ("Solve for x: 3x + 2 = 11", "math"),
        ("What are the symptoms of diabetes?", "medicine"),
        ("Can my landlord keep my deposit?", "law"),
        ("What's a good name for my cat?", "general"),
    ],
)
def test_rule_label(text: str, category: str) -> None:
    assert rule_label(text)[0] == category


def test_two_domains_are_ambiguous_and_left_unlabelled() -> None:
    label, why = rule_label("Is it legal for a doctor to share my diagnosis?")
    assert label is None
    assert why.startswith("ambiguous")
