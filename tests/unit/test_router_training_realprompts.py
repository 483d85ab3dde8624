"""Per-language accuracy and the agreement of the two labelling procedures."""

from __future__ import annotations

from router_training.data import Example
from router_training.evaluate import per_language
from router_training.realprompts import agreement, reader_agreement


def test_per_language_pools_small_languages_and_reports_non_english() -> None:
    rows = [Example("x", "code", extra={"lang": "en"}) for _ in range(4)]
    rows += [Example("x", "code", extra={"lang": "zh"}) for _ in range(10)]
    rows += [Example("x", "math", extra={"lang": "ko"}) for _ in range(2)]
    predicted = ["code", "code", "code", "math"] + ["code"] * 5 + ["math"] * 5 + ["math", "x"]
    out = per_language(rows, predicted)
    assert out["en"] == {"n": 4, "accuracy": 0.75}
    assert out["zh"] == {"n": 10, "accuracy": 0.5}
    assert out["other"] == {"n": 2, "accuracy": 0.5}
    assert "ko" not in out
    assert out["non-en"] == {"n": 12, "accuracy": 0.5}


def test_agreement_counts_only_what_the_rules_decide() -> None:
    rows = [
        Example("write a python function to sort a list", "code"),
        Example("write a poem about the sea", "writing"),
        Example("write a poem about the sea, in python", "writing"),  # rules: code
        Example("symptoms of the flu and the history of the law court", "medicine"),  # ambiguous
    ]
    out = agreement(rows)
    assert out["n"] == 4
    assert out["rules_decided"] == 3
    assert out["agreement"] == round(2 / 3, 4)
    assert out["confusions"] == [("writing->code", 1)]
    assert out["with_a_cue"] == 3
    assert out["agreement_with_a_cue"] == round(2 / 3, 4)


def test_reader_agreement_counts_skips_apart() -> None:
    first = {"a": "code", "b": "writing", "c": "skip", "d": "general", "e": "math"}
    second = {"a": "code", "b": "general", "c": "skip", "d": "skip", "z": "code"}
    out = reader_agreement(first, second)
    # Turns both read: a, b, c, d (z was never read first).
    assert out["n"] == 4
    assert out["agreement"] == 0.5  # a and c
    # Both gave a category: a and b.
    assert out["both_labelled"] == 2
    assert out["agreement_both_labelled"] == 0.5
    assert dict(out["confusions"]) == {"writing->general": 1, "general->skip": 1}
