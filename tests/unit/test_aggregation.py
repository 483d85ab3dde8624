"""Aggregation pieces on their own: answer normalization, voting, the aggregator's prompt."""

from __future__ import annotations

import pytest

from coe_router.aggregation.panel import PanelAnswer, panel_failure, total_usage
from coe_router.aggregation.synthesize import INSTRUCTION, aggregator_messages
from coe_router.aggregation.vote import best, normalize, vote
from coe_router.errors import UpstreamStatusError, UpstreamTimeout


def answer(expert: str, text: str, score: float = 0.0, ok: bool = True) -> PanelAnswer:
    return PanelAnswer(expert, score, ok=ok, text=text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # option letters, in the shapes small models write them
        ("The answer is (B).", "letter:B"),
        ("Answer: **C**", "letter:C"),
        ("D.", "letter:D"),
        ("(A)", "letter:A"),
        ("B) Paris is the capital of France.", "letter:B"),
        ("C. Late Sixth Century BCE", "letter:C"),
        ("The correct answer is C. Late Sixth Century BCE", "letter:C"),
        ("Option A looks right, but the answer is D.", "letter:D"),
        ("In option A we see a trap.\nAnswer: B", "letter:B"),
        ("\\boxed{B}", "letter:B"),
        # a lower-case "a" is a word, not option A
        ("The answer is a prime number: 7", "number:7"),
        ("Answer: I'll show it; the result is 5", "number:5"),
        # numbers: the marked one first, else the last; commas and trailing zeros dropped
        ("The answer is 1,234.50", "number:1234.5"),
        ("#### 18", "number:18"),
        ("The answer is 18 (3 + 15).", "number:18"),
        ("So x = 5 and the final answer: $42.00", "number:42"),
        ("First 3, then 4, so 7", "number:7"),
        ("-3", "number:-3"),
        ("\\boxed{12}", "number:12"),
        ("0.50", "number:0.5"),
        # short text
        ("Paris.", "text:paris"),
        ("  The Eiffel   Tower! ", "text:the eiffel tower"),
        # nothing comparable
        ("", None),
        (" ".join(["word"] * 13), None),
    ],
)
def test_normalize(text: str, expected: str | None) -> None:
    assert normalize(text) == expected


def test_distinct_large_numbers_stay_distinct() -> None:
    # Rounding to six significant digits ("%g") would make these one vote.
    assert normalize("1234567") != normalize("1234568")
    assert normalize("1234567") == normalize("1,234,567.0") == "number:1234567"


def test_vote_takes_the_majority_and_marks_its_supporters() -> None:
    answers = [
        answer("a", "The answer is 42", score=0.2),
        answer("b", "It is 41", score=0.9),
        answer("c", "42.", score=0.5),
    ]
    chosen = vote(answers)
    assert chosen.expert == "c"  # the most confident supporter of the majority
    assert [a.used for a in answers] == [True, False, True]


def test_vote_tie_goes_to_the_most_confident_router_score() -> None:
    answers = [answer("a", "A", score=0.3), answer("b", "B", score=0.7)]
    assert vote(answers).expert == "b"
    answers = [answer("a", "A", score=0.8), answer("b", "B", score=0.7)]
    assert vote(answers).expert == "a"


def test_vote_ignores_failed_answers_and_falls_back_to_best() -> None:
    failed = answer("x", "", score=1.0, ok=False)
    answers = [failed, answer("a", " ".join(["long"] * 20), 0.2), answer("b", "", 0.6)]
    assert vote(answers).expert == "b"  # nothing comparable: the best score wins
    assert not failed.used


def test_best_is_the_most_confident_that_answered() -> None:
    answers = [answer("a", "x", 0.9, ok=False), answer("b", "y", 0.4), answer("c", "z", 0.1)]
    assert best(answers).expert == "b"
    assert [a.used for a in answers] == [False, True, False]


def test_total_usage_sums_every_call() -> None:
    answers = [answer("a", "x"), answer("b", "y")]
    answers[0].usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    answers[1].usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    aggregator = {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}
    assert total_usage(answers, aggregator) == {
        "prompt_tokens": 28, "completion_tokens": 9, "total_tokens": 37,
    }  # fmt: skip


def test_panel_failure_status() -> None:
    def failed(expert: str, status: int) -> PanelAnswer:
        a = PanelAnswer(expert, 0.0, error=f"failed with {status}", error_status=status)
        return a

    timeout = panel_failure([failed("a", 504), failed("b", 504)])
    assert isinstance(timeout, UpstreamTimeout)
    assert timeout.status_code == 504
    assert "a: failed with 504" in timeout.message
    assert panel_failure([failed("a", 504), failed("b", 503)]).status_code == 502
    # Every expert rejected the request the same way: that is the request's fault.
    rejected = [failed("a", 400), failed("b", 400)]
    for a in rejected:
        a.exception = UpstreamStatusError(400, {"error": {"message": "max_tokens too large"}})
    assert panel_failure(rejected).status_code == 400
    assert panel_failure(rejected).message == "max_tokens too large"


def test_aggregator_messages_list_the_answers_that_came() -> None:
    conversation = [{"role": "user", "content": "2+2?"}]
    answers = [
        answer("code", "4"),
        answer("down", "", ok=False),
        answer("general", "x" * 50),
    ]
    out = aggregator_messages(conversation, answers, max_chars=10)
    assert out[0] == conversation[0]
    last = out[-1]
    assert last["role"] == "user"
    text = last["content"]
    assert "Expert 1 (code):\n4" in text
    assert "Expert 2 (general):\n" + "x" * 10 + " [...]" in text
    assert "down" not in text
    assert text.endswith(INSTRUCTION)
    assert [a.used for a in answers] == [True, False, True]
