"""count_tokens: the request vLLM's /tokenize counts, and the labelled estimate."""

from __future__ import annotations

from typing import Any

import anthropic.types
import pytest

from coe_router.anthropic.count import TOKENS_PER_IMAGE, estimate, exact, tokenize_body
from coe_router.anthropic.types import CountTokensRequest
from coe_router.errors import UpstreamBadResponse

pytestmark = pytest.mark.unit

TOOL = {"name": "f", "description": "does f",
        "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}  # fmt: skip


def req(messages: list[dict[str, Any]], **extra: Any) -> CountTokensRequest:
    return CountTokensRequest.model_validate({"model": "coe", "messages": messages, **extra})


def test_tokenize_body_renders_what_the_chat_request_would() -> None:
    body = tokenize_body(
        req([{"role": "user", "content": "hi"}], system="Be brief.", tools=[TOOL]),
        "small-coder",
    )
    assert body["model"] == "small-coder"
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hi"}]  # fmt: skip
    assert body["tools"][0]["function"]["name"] == "f"
    assert body["add_generation_prompt"] is True
    assert "continue_final_message" not in body


def test_tokenize_body_continues_a_prefilled_assistant_turn() -> None:
    body = tokenize_body(req([{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "Hel"}]), "m")  # fmt: skip
    assert (body["add_generation_prompt"], body["continue_final_message"]) == (False, True)


def test_exact_reads_vllm_s_count() -> None:
    count = exact({"count": 42, "max_model_len": 4096, "tokens": list(range(42))})
    assert count.model_dump() == {"input_tokens": 42, "approximate": False}
    anthropic.types.MessageTokensCount.model_validate(count.model_dump())


@pytest.mark.parametrize("answer", [{}, {"count": "12"}, {"count": -1}, {"count": True}])
def test_exact_rejects_an_answer_without_a_count(answer: dict[str, Any]) -> None:
    with pytest.raises(UpstreamBadResponse):
        exact(answer)


def test_the_estimate_says_it_is_approximate_and_grows_with_the_input() -> None:
    short = estimate(req([{"role": "user", "content": "hello"}]))
    long = estimate(req([{"role": "user", "content": "hello " * 400}]))
    with_tools = estimate(req([{"role": "user", "content": "hello"}], tools=[TOOL]))
    assert short.approximate
    assert long.approximate
    anthropic.types.MessageTokensCount.model_validate(long.model_dump())
    # About 4 bytes per token of English: 2400 bytes are some 600 tokens.
    assert 500 <= long.input_tokens <= 700
    assert short.input_tokens < with_tools.input_tokens < long.input_tokens


def test_the_estimate_counts_bytes_so_cjk_is_not_undercounted() -> None:
    latin = estimate(req([{"role": "user", "content": "a" * 300}])).input_tokens
    cjk = estimate(req([{"role": "user", "content": "字" * 300}])).input_tokens  # 3 bytes each
    assert cjk >= 2.5 * latin - 10


def test_the_estimate_counts_tool_calls_results_and_images() -> None:
    plain = estimate(req([{"role": "user", "content": "look"}])).input_tokens
    image = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    with_image = estimate(req([{"role": "user", "content": [
        {"type": "text", "text": "look"}, image]}])).input_tokens  # fmt: skip
    assert with_image - plain >= TOKENS_PER_IMAGE
    loop = estimate(req([
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {"x": 123456789}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "result " * 50}]},
    ])).input_tokens  # fmt: skip
    assert loop > plain + 50
