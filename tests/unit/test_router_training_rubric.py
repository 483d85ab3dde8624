"""The verifiable-instruction rubric that scores writing and general requests in `profile`."""

from __future__ import annotations

from typing import Any

import pytest

from router_training.data import Example
from router_training.profile import score
from router_training.rubric import CHECKERS, count_sentences, count_words, score_rubric, supported


def check(name: str, text: str, **kwargs: Any) -> bool:
    return score_rubric(text, [name], [kwargs]) == 1.0


def test_counts() -> None:
    assert count_words("Hello, world: it's 3 o'clock.") == 7  # \w+ runs, as IFEval's nltk
    assert count_sentences("One. Two! Three? Four") == 4
    assert count_sentences("Dr. Who came.") == 2  # a regex, not a sentence splitter
    assert count_sentences("") == 0


@pytest.mark.parametrize(
    ("name", "kwargs", "good", "bad"),
    [
        ("punctuation:no_comma", {}, "no commas here", "one, two"),
        ("change_case:english_lowercase", {}, "all lower", "Not lower"),
        ("change_case:english_capital", {}, "ALL CAPS", "Mostly CAPS"),
        (
            "length_constraints:number_words",
            {"relation": "at least", "num_words": 3},
            "one two three",
            "one two",
        ),
        (
            "length_constraints:number_words",
            {"relation": "less than", "num_words": 3},
            "one two",
            "one two three",
        ),
        (
            "length_constraints:number_paragraphs",
            {"num_paragraphs": 2},
            "first\n***\nsecond",
            "first\n***\n\n***\nsecond",
        ),
        ("keywords:existence", {"keywords": ["cat", "dog"]}, "A Cat and a dog", "a cat"),
        ("keywords:forbidden_words", {"forbidden_words": ["red"]}, "a bored cat", "a RED cat"),
        (
            "keywords:frequency",
            {"keyword": "moon", "frequency": 2, "relation": "at least"},
            "moon and Moon",
            "moon",
        ),
        (
            "keywords:letter_frequency",
            {"letter": "t", "let_frequency": 2, "let_relation": "less than"},
            "a cat",
            "a tot",
        ),
        ("detectable_format:title", {}, "<<A Title>>\ntext", "A Title\ntext"),
        (
            "detectable_format:number_bullet_lists",
            {"num_bullets": 2},
            "* one\n* two",
            "* one\n* two\n- three",
        ),
        (
            "detectable_format:number_highlighted_sections",
            {"num_highlights": 2},
            "*one* and **two**",
            "*one* and ** **",
        ),
        ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
        (
            "detectable_format:multiple_sections",
            {"section_spliter": "Section", "num_sections": 2},
            "Section 1\na\nSection 2\nb",
            "Section 1\na",
        ),
        (
            "detectable_format:constrained_response",
            {},
            "My answer is yes.",
            "Yes, definitely.",
        ),
        ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[a] [b]", "[a]"),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "hi\nP.S. bye", "hi"),
        ("startend:quotation", {}, '"quoted"', "not quoted"),
        (
            "startend:end_checker",
            {"end_phrase": "Any questions?"},
            "Done. Any questions?",
            "Any questions? Done.",
        ),
        ("combination:two_responses", {}, "one\n******\ntwo", "one\n******\none"),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
            "first\n\nThen, second",
            "first\n\nAnd then",
        ),
    ],
)
def test_each_checker_tells_followed_from_not(
    name: str, kwargs: dict[str, Any], good: str, bad: str
) -> None:
    assert check(name, good, **kwargs)
    assert not check(name, bad, **kwargs)


def test_score_is_the_share_followed_and_none_kwargs_are_ignored() -> None:
    names = ["punctuation:no_comma", "change_case:english_lowercase", "keywords:existence"]
    kwargs = [None, {"unused": None}, {"keywords": ["tea"]}]
    assert score_rubric("i like tea", names, kwargs) == 1.0
    assert score_rubric("I like tea", names, kwargs) == pytest.approx(2 / 3)
    assert score_rubric("I like coffee, really", names, kwargs) == 0.0


def test_unsupported_instructions_are_refused() -> None:
    assert supported(["punctuation:no_comma"])
    assert not supported(["punctuation:no_comma", "language:response_language"])
    assert not supported([])
    assert "language:response_language" not in CHECKERS
    with pytest.raises(ValueError, match="no checker"):
        score_rubric("x", ["language:response_language"], [{"language": "fr"}])


def test_profile_scores_an_ifeval_row_with_the_rubric() -> None:
    row = Example(
        "Write a haiku without commas, in lowercase.",
        "writing",
        extra={
            "instructions": ["punctuation:no_comma", "change_case:english_lowercase"],
            "kwargs": [{}, {}],
        },
    )
    assert score(row, "autumn wind\nleaves fall") == 1.0
    assert score(row, "Autumn wind, leaves fall") == 0.0
