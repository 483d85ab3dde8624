"""End to end: the official ``anthropic`` and ``openai`` clients, the gateway, real vLLM CPU
experts. Messages streamed and not, count_tokens against vLLM's tokenizer, and tool loops
(the Qwen coder's chat template supports tools) that stay on the expert that made the call.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.conversation import string_tool
from tests.support import GatewayProcess as Gateway

pytestmark = pytest.mark.integration

#: Greedy and short: CPU generation is slow and answers must be reproducible.
GREEDY = {"temperature": 0.0}
RUN_PYTHON = string_tool("run_python", "Run a Python snippet and return what it prints.", "code")
FRANCE = "What is the capital of France?"
ASK = "Use the run_python tool to test a Python function that reverses a string."


@pytest.fixture
def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", timeout=180, max_retries=0)


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=180)


def test_a_message_gets_a_real_routed_answer(claude: anthropic.Anthropic, gateway: Gateway) -> None:
    raw = claude.messages.with_raw_response.create(
        model="coe", max_tokens=32, extra_body=GREEDY,
        messages=[{"role": "user", "content": FRANCE}],
    )  # fmt: skip
    message = raw.parse()
    # Which expert takes it is the profiled map's call (see test_local_experts).
    planned = httpx.post(
        f"{gateway.url}/v1/route",
        json={
            "model": "coe",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        },
        timeout=30,
    ).json()
    assert raw.headers["x-coe-expert"] == planned["expert"]
    assert raw.headers["x-coe-strategy"] == "category"
    assert "x-coe-confidence" in raw.headers
    assert message.id.startswith("msg_")
    text = "".join(b.text for b in message.content if b.type == "text")
    assert "Paris" in text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


def test_a_streamed_message_through_the_anthropic_client(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="coe",
        max_tokens=48,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "Write a python function that adds two numbers."}],
    ) as stream:
        assert stream.response.headers["x-coe-expert"] == "code"
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 3, "expected token-by-token deltas"
    assert "def " in "".join(pieces)
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0


def test_count_tokens_is_the_expert_s_own_count(claude: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Write a python function that reverses a string."}]
    raw = claude.messages.with_raw_response.count_tokens(
        model="coe",
        system="You are terse.",
        messages=messages,  # type: ignore[arg-type]
    )
    count = raw.parse()
    assert raw.headers["x-coe-token-count"] == "exact"
    assert json.loads(raw.http_response.text)["approximate"] is False
    # The same input, generated: vLLM's prompt token count must agree with the count.
    answer = claude.messages.create(
        model="coe",
        system="You are terse.",
        max_tokens=1,
        messages=messages,  # type: ignore[arg-type]
    )
    assert count.input_tokens == answer.usage.input_tokens


def test_a_tool_loop_through_messages_stays_on_the_coder(claude: anthropic.Anthropic) -> None:
    first = claude.messages.with_raw_response.create(
        model="coe", max_tokens=96, tools=[RUN_PYTHON],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "run_python"}, extra_body=GREEDY,
        messages=[{"role": "user", "content": ASK}],
    )  # fmt: skip
    assert first.headers["x-coe-expert"] == "code"
    called = first.parse()
    calls = [b for b in called.content if b.type == "tool_use"]
    assert calls, called.content
    call = calls[0]
    assert call.name == "run_python"
    assert isinstance(call.input.get("code"), str)
    turn = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in called.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "olleh"}]},
    ]  # fmt: skip
    second = claude.messages.with_raw_response.create(
        model="coe", max_tokens=48, tools=[RUN_PYTHON], tool_choice={"type": "none"},  # type: ignore[list-item]
        extra_body=GREEDY, messages=turn,  # type: ignore[arg-type]
    )  # fmt: skip
    assert second.headers["x-coe-expert"] == "code"
    assert second.headers["x-coe-affinity"] == "tool_loop"
    answer = second.parse()
    assert "".join(b.text for b in answer.content if b.type == "text").strip()


def test_a_streamed_tool_call_through_messages(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="coe",
        max_tokens=96,
        tools=[RUN_PYTHON],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "run_python"},
        extra_body=GREEDY,
        messages=[{"role": "user", "content": ASK}],
    ) as stream:
        final = stream.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert calls, final.content
    assert calls[0].name == "run_python"
    assert isinstance(calls[0].input.get("code"), str)


def test_a_tool_loop_through_chat_completions_stays_on_the_coder(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {
        "name": RUN_PYTHON["name"], "description": RUN_PYTHON["description"],
        "parameters": RUN_PYTHON["input_schema"]}}]  # fmt: skip
    ask = [{"role": "user", "content": ASK}]
    first = client.chat.completions.with_raw_response.create(
        model="coe", messages=ask, tools=tools, max_tokens=96, temperature=0.0,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "run_python"}},
    )  # fmt: skip
    assert first.headers["x-coe-expert"] == "code"
    message = first.parse().choices[0].message
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call.function.name == "run_python"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments)["code"], str)  # type: ignore[union-attr]
    turn = [*ask, message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "olleh"}]  # fmt: skip
    second = client.chat.completions.with_raw_response.create(
        model="coe", messages=turn, tools=tools, tool_choice="none",  # type: ignore[arg-type]
        max_tokens=48, temperature=0.0,
    )  # fmt: skip
    assert second.headers["x-coe-expert"] == "code"
    assert second.headers["x-coe-affinity"] == "tool_loop"
    assert (second.parse().choices[0].message.content or "").strip()
