"""Messages <-> OpenAI chat translation, checked against the official ``anthropic`` types."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types
import pytest
from pydantic import ValidationError

from coe_router.anthropic.translate import (
    TOOL_ERROR_PREFIX,
    UNPARSED_ARGUMENTS,
    from_openai,
    to_openai,
)
from coe_router.anthropic.types import MessagesRequest
from coe_router.errors import InvalidRequest, UpstreamBadResponse
from tests.conversation import string_tool

pytestmark = pytest.mark.unit

WEATHER = string_tool("get_weather", "Current weather in a city", "city")


def request(messages: list[dict[str, Any]], **extra: Any) -> MessagesRequest:
    return MessagesRequest.model_validate(
        {"model": "coe", "max_tokens": 64, "messages": messages, **extra}
    )


def completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123", "object": "chat.completion", "model": "small-coder",
        "choices": [{"index": 0, "message": {"role": "assistant", **message},
                     "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }  # fmt: skip


# --- request ----------------------------------------------------------------------------------


def test_system_text_and_sampling_fields_translate() -> None:
    req = request(
        [{"role": "user", "content": "hi"}],
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        stop_sequences=["###"], temperature=0.2, top_p=0.9, top_k=40,
        metadata={"user_id": "u-1"}, thinking={"type": "enabled", "budget_tokens": 1024},
    )  # fmt: skip
    body = to_openai(req)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "hi"},
    ]
    assert body["max_tokens"] == 64
    assert body["stop"] == ["###"]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.2, 0.9, 40)
    assert body["user"] == "u-1"
    # Anthropic-only fields the experts cannot honour are not forwarded.
    assert "thinking" not in body
    assert "stream" not in body


def test_streaming_asks_the_expert_for_usage() -> None:
    body = to_openai(request([{"role": "user", "content": "hi"}], stream=True))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_images_become_image_url_parts() -> None:
    body = to_openai(request([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}]))  # fmt: skip
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]  # fmt: skip


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages() -> None:
    body = to_openai(request([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "is_error": True,
             "content": [{"type": "text", "text": "service down"}]},
            {"type": "text", "text": "Answer in one line."},
        ]},
    ], tools=[WEATHER]))  # fmt: skip
    assistant, first, second, user = body["messages"][1:]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == "Checking."
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_1", "call_2"]
    assert assistant["tool_calls"][0]["type"] == "function"
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(assistant["tool_calls"][1]["function"]["arguments"]) == {"city": "Rome"}
    # Tool results come straight after the call (OpenAI's order), the user's text after them.
    assert first == {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"}
    assert second == {
        "role": "tool", "tool_call_id": "call_2", "content": TOOL_ERROR_PREFIX + "service down"
    }  # fmt: skip
    assert user == {"role": "user", "content": "Answer in one line."}


def test_images_in_a_tool_result_follow_as_a_user_message() -> None:
    body = to_openai(request([
        {"role": "user", "content": "Screenshot?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "here"},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]},
    ]))  # fmt: skip
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "here"}
    assert body["messages"][3] == {
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    }  # fmt: skip


def test_tools_become_function_tools() -> None:
    body = to_openai(request([{"role": "user", "content": "hi"}], tools=[WEATHER]))
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": WEATHER["input_schema"]}}]  # fmt: skip
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"},
         {"type": "function", "function": {"name": "get_weather"}}),
    ],
)  # fmt: skip
def test_tool_choice_maps_to_openai(choice: dict[str, Any], expected: object) -> None:
    body = to_openai(request([{"role": "user", "content": "hi"}], tools=[WEATHER],
                             tool_choice=choice))  # fmt: skip
    assert body["tool_choice"] == expected
    assert "parallel_tool_calls" not in body


def test_disable_parallel_tool_use_maps_to_parallel_tool_calls_false() -> None:
    body = to_openai(
        request(
            [{"role": "user", "content": "hi"}],
            tools=[WEATHER],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )
    assert body["parallel_tool_calls"] is False


def test_a_trailing_assistant_turn_is_continued() -> None:
    body = to_openai(request([{"role": "user", "content": "Name a colour."},
                              {"role": "assistant", "content": "The colour is"}]))  # fmt: skip
    assert body["messages"][-1] == {"role": "assistant", "content": "The colour is"}
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False


def test_unsupported_block_types_are_rejected_naming_the_accepted_ones() -> None:
    with pytest.raises(ValidationError) as info:
        request([{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "data": "x"}}]}])  # fmt: skip
    assert "document" in str(info.value)
    assert "tool_result" in str(info.value)


def test_max_tokens_is_required() -> None:
    with pytest.raises(ValidationError, match="max_tokens"):
        MessagesRequest.model_validate(
            {"model": "coe", "messages": [{"role": "user", "content": "x"}]}
        )


def test_a_tool_use_block_in_a_user_turn_is_an_invalid_request() -> None:
    req = request([{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}])  # fmt: skip
    with pytest.raises(InvalidRequest, match="tool_use block cannot appear in a user"):
        to_openai(req)


# --- response ---------------------------------------------------------------------------------


def test_text_answer_is_a_valid_anthropic_message() -> None:
    message = from_openai(completion({"content": "Hello!"}), model="coe")
    parsed = anthropic.types.Message.model_validate(message.model_dump(mode="json"))
    assert parsed.id.startswith("msg_")
    assert "abc123" in parsed.id
    assert parsed.role == "assistant"
    assert parsed.model == "coe"
    assert [(b.type, getattr(b, "text", None)) for b in parsed.content] == [("text", "Hello!")]
    assert parsed.stop_reason == "end_turn"
    assert parsed.stop_sequence is None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (11, 7)


def test_tool_calls_become_tool_use_blocks() -> None:
    calls = [
        {"id": "chatcmpl-tool-1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "chatcmpl-tool-2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]  # fmt: skip
    message = from_openai(
        completion({"content": "Let me check.", "tool_calls": calls}, "tool_calls"), model="coe"
    )
    parsed = anthropic.types.Message.model_validate(message.model_dump(mode="json"))
    assert parsed.stop_reason == "tool_use"
    text, first, second = parsed.content
    assert isinstance(text, anthropic.types.TextBlock)
    assert isinstance(first, anthropic.types.ToolUseBlock)
    assert isinstance(second, anthropic.types.ToolUseBlock)
    assert (first.id, first.name, first.input) == ("chatcmpl-tool-1", "get_weather",
                                                   {"city": "Paris"})  # fmt: skip
    assert second.input == {"city": "Rome"}


def test_a_tool_call_ended_with_stop_is_still_tool_use() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = from_openai(completion({"content": None, "tool_calls": [call]}, "stop"), model="m")
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "tool_use"


def test_arguments_that_are_not_a_json_object_are_kept_not_dropped() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1'}}
    message = from_openai(completion({"tool_calls": [call]}, "tool_calls"), model="m")
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.input == {UNPARSED_ARGUMENTS: '{"a": 1'}


@pytest.mark.parametrize(
    ("finish", "matched", "expected", "sequence"),
    [
        ("stop", None, "end_turn", None),
        ("length", None, "max_tokens", None),
        ("tool_calls", None, "tool_use", None),
        ("content_filter", None, "refusal", None),
        ("stop", "###", "stop_sequence", "###"),
        # vLLM names a stop string the client did not ask for (the template's own): end_turn.
        ("stop", "<|im_end|>", "end_turn", None),
        # A token id, not a string: vLLM's way of naming a stop token.
        ("stop", 151645, "end_turn", None),
    ],
)
def test_stop_reasons(finish: str, matched: object, expected: str, sequence: str | None) -> None:
    message = from_openai(
        completion({"content": "x"}, finish, stop_reason=matched),
        model="m", stop_sequences=["###", "END"],
    )  # fmt: skip
    assert (message.stop_reason, message.stop_sequence) == (expected, sequence)
    anthropic.types.Message.model_validate(message.model_dump(mode="json"))


def test_cached_prompt_tokens_are_reported() -> None:
    body = completion({"content": "x"})
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 8}
    assert from_openai(body, model="m").usage.cache_read_input_tokens == 8


def test_a_completion_without_choices_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponse):
        from_openai({"id": "x", "choices": []}, model="m")


def test_a_tool_loop_round_trips_through_the_client_types() -> None:
    """The expert's call -> an Anthropic tool_use -> the client's next request carrying it
    and its result -> the same call and id on the OpenAI side."""
    call = {"id": "chatcmpl-tool-9", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}  # fmt: skip
    answer = from_openai(completion({"content": None, "tool_calls": [call]}, "tool_calls"),
                         model="coe")  # fmt: skip
    client_view = anthropic.types.Message.model_validate(answer.model_dump(mode="json"))
    tool_use = client_view.content[0]
    assert isinstance(tool_use, anthropic.types.ToolUseBlock)
    next_turn = request([
        {"role": "user", "content": "Weather in Oslo?"},
        # What the client sends back: its Message as a MessageParam, serialized.
        {"role": "assistant", "content": [
            b.model_dump(mode="json", exclude_none=True) for b in client_view.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "-3C snow"}]},
    ], tools=[WEATHER])  # fmt: skip
    messages = to_openai(next_turn)["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call["id"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert messages[2] == {"role": "tool", "tool_call_id": call["id"], "content": "-3C snow"}
