"""Profiling: answer scoring (letters, numbers, unit tests) and a run through the
gateway's expert clients over a mock transport."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from router_training.data import Example
from router_training.profile import pilots, run_profiles, score_code, score_letter, score_number
from tests.unit.test_routing_support import catalog

PROMPT = 'def add(a, b):\n    """Add two numbers."""\n'
TEST = "def check(f):\n    assert f(2, 3) == 5\n"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is (B).", 1.0),
        ("B. Paris", 1.0),
        ("answer: C", 0.0),
        ("I think A", 0.0),
        # Options listed back, then a stated answer: the statement counts.
        ("A. Paris\nB. Rome\n\nThe correct answer is B. Rome.", 1.0),
        ("**B**", 1.0),
        # Options listed back with no answer: no commitment, not the first line's letter.
        ("A. Paris\nB. Rome\nC. Oslo", 0.0),
        # A sentence starting with the article "A" is not option A.
        ("B blocks are fine", 0.0),
    ],
)
def test_letter(response: str, expected: float) -> None:
    assert score_letter("B", response) == expected


def test_final_number() -> None:
    assert score_number("1,200", "3 * 400 = 1200. So the answer is 1,200") == 1.0
    assert score_number("18", "She makes 18 dollars, 9 eggs") == 0.0
    assert score_number("18", "no idea") == 0.0


def test_code_runs_the_unit_tests() -> None:
    assert score_code(PROMPT, "    return a + b\n", TEST, "add") == 1.0
    assert (
        score_code(PROMPT, "```python\ndef add(a, b):\n    return a + b\n```", TEST, "add") == 1.0
    )
    assert score_code(PROMPT, "    return a - b\n", TEST, "add") == 0.0


def test_code_that_hangs_is_cut_off() -> None:
    assert score_code(PROMPT, "    while True: pass\n", TEST, "add", timeout=1.0) == 0.0


def completion(model: str, text: str, usage: dict[str, int] | None = None) -> httpx.Response:
    """An expert's non-streamed chat completion saying ``text``."""
    body: dict[str, object] = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return httpx.Response(200, json=body)


def test_profile_through_expert_clients() -> None:
    answers = {"g": "The answer is A", "c": "The answer is B", "m": "B", "w": "A"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(request.content)
        return completion(body["model"], answers[body["model"]])

    examples = [
        Example("q1", "code", ["logic"], extra={"answer": "B"}),
        Example("q2", "general", ["logic"], extra={"answer": "A"}),
    ]
    profiles, per_example = asyncio.run(
        run_profiles(catalog(), examples, transport=httpx.MockTransport(handler))
    )
    coder = profiles["experts"]["coder"]
    assert coder["categories"]["code"]["score"] == 1.0
    assert coder["categories"]["general"]["score"] == 0.0
    assert coder["skills"]["logic"]["score"] == 0.5
    assert coder["errors"] == 0
    assert coder["cost"] == 3
    assert per_example[0] == {"general": 0.0, "coder": 1.0, "mathy": 1.0, "writer": 0.0}
    x = np.eye(2, 4, dtype=np.float32)
    p = pilots(x, per_example)
    assert np.allclose(p["coder"][0], x[0])
    assert np.allclose(p["general"][0], x[1])


def test_profile_sends_each_rows_budget_and_records_tokens_seconds_and_answers() -> None:
    budgets: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(request.content)
        budgets.append(body["max_tokens"])
        usage = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
        return completion(body["model"], f"{body['model']}: The answer is A", usage)

    examples = [
        Example("q1", "code", extra={"answer": "A", "max_tokens": 8}),
        Example("q2", "code", extra={"answer": "A", "max_tokens": 4000}),
    ]
    answers: list[dict[str, str]] = [{} for _ in examples]
    profiles, _ = asyncio.run(
        run_profiles(
            catalog(),
            examples,
            ["coder"],
            max_tokens=100,
            transport=httpx.MockTransport(handler),
            responses=answers,
        )
    )
    assert sorted(budgets) == [8, 100]  # a row's own budget, capped by the run's
    coder = profiles["experts"]["coder"]
    assert coder["prompt_tokens_per_request"] == 10
    assert coder["completion_tokens_per_request"] == 4
    assert coder["seconds_per_request"] >= 0
    assert profiles["run"]["n"] == 2
    assert answers[0]["coder"].endswith("The answer is A")


def test_keep_merges_a_re_profiled_expert_into_the_previous_run(tmp_path: Path) -> None:
    from router_training.profile import keep_other_experts, write_scores

    examples = [Example("q1", "code"), Example("q2", "math")]
    old = {"experts": {"general": {"errors": 2}, "coder": {"errors": 0}}, "run": {"n": 2}}
    (tmp_path / "profiles.json").write_text(json.dumps(old))
    write_scores(tmp_path / "scores.jsonl", examples, [{"coder": 1.0}, {"coder": 0.0}])
    new = {"experts": {"general": {"errors": 0}}, "run": {"n": 2, "again": True}}
    profiles, scores = keep_other_experts(
        tmp_path, examples, new, [{"general": 0.5}, {"general": 1.0}]
    )
    assert profiles["experts"] == {"coder": {"errors": 0}, "general": {"errors": 0}}
    assert profiles["runs"] == [{"n": 2}, {"n": 2, "again": True}]
    assert scores == [{"coder": 1.0, "general": 0.5}, {"coder": 0.0, "general": 1.0}]
    with pytest.raises(ValueError, match="same data"):
        keep_other_experts(tmp_path, [Example("other", "code")] * 2, new, [{}, {}])


def test_keep_without_an_earlier_run_says_so(tmp_path: Path) -> None:
    from router_training.profile import keep_other_experts

    with pytest.raises(ValueError, match="no earlier run"):
        keep_other_experts(tmp_path, [Example("q", "code")], {"experts": {}, "run": {}}, [{}])
