"""OpenAI chunks -> Anthropic stream events, read back by the official ``anthropic`` client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import pytest

from coe_router.anthropic.stream import PING, MessageStream
from coe_router.anthropic.translate import UNPARSED_ARGUMENTS
from coe_router.errors import UpstreamUnavailable

pytestmark = pytest.mark.unit


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s1", "object": "chat.completion.chunk", "model": "small-coder",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}],
    }  # fmt: skip


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}  # fmt: skip


def call(index: int, *, id: str | None = None, name: str | None = None,
         args: str | None = None) -> dict[str, Any]:  # fmt: skip
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    out: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        out.update(id=id, type="function")
    return out


TEXT = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    usage(12, 2),
]
TOOLS = [
    chunk({"role": "assistant", "content": "Checking."}),
    chunk({"tool_calls": [call(0, id="call_a", name="get_weather", args="")]}),
    chunk({"tool_calls": [call(0, args='{"ci')]}),
    chunk({"tool_calls": [call(0, args='ty": "Paris"}')]}),
    chunk({"tool_calls": [call(1, id="call_b", name="get_weather", args='{"city": "Rome"}')]}),
    chunk({}, "tool_calls"),
    usage(30, 25),
]


async def source(chunks: list[dict[str, Any]], error: Exception | None = None
                 ) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    for c in chunks:
        yield c
    if error is not None:
        raise error


async def translate(chunks: list[dict[str, Any]], error: Exception | None = None,
                    **kwargs: Any) -> tuple[MessageStream, bytes]:  # fmt: skip
    stream = MessageStream(source(chunks, error), model="coe", **kwargs)
    return stream, b"".join([e async for e in stream])


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        kind_line, data_line = block.split("\n")
        kind = kind_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == kind  # Anthropic repeats the event name in the data
        out.append((kind, data))
    return out


def client_over(raw: bytes, status: int = 200) -> anthropic.AsyncAnthropic:
    """The official client, talking to a transport that answers ``raw``."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        kind = "text/event-stream" if status == 200 else "application/json"
        return httpx2.Response(status, headers={"content-type": kind}, content=raw)

    return anthropic.AsyncAnthropic(
        api_key="k", base_url="http://gateway", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handle)),
    )  # fmt: skip


async def read_back(raw: bytes) -> tuple[str, anthropic.types.Message]:
    """What the official client makes of the stream ``raw``: its text, and its final
    message (the request it sends does not matter: the transport answers ``raw``)."""
    async with client_over(raw).messages.stream(
        model="coe", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    return text, final


async def test_text_stream_is_anthropic_s_event_sequence() -> None:
    stream, raw = await translate(TEXT)
    seq = events(raw)
    assert [k for k, _ in seq] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = seq[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert (start["role"], start["model"], start["content"]) == ("assistant", "coe", [])
    assert seq[1][1] == {"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}  # fmt: skip
    assert "".join(d["delta"]["text"] for k, d in seq if k == "content_block_delta") == "Hello"
    delta = seq[5][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 12, "output_tokens": 2}
    assert (stream.usage_in, stream.usage_out, stream.stop_reason) == (12, 2, "end_turn")


async def test_the_client_accumulates_the_text_stream() -> None:
    _, raw = await translate(TEXT)
    text, final = await read_back(raw)
    assert text == "Hello"
    assert [b.type for b in final.content] == ["text"]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 2)


async def test_tool_calls_stream_as_tool_use_blocks_with_input_json_deltas() -> None:
    stream, raw = await translate(TOOLS)
    seq = events(raw)
    starts = [d for k, d in seq if k == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "text"), (1, "tool_use"), (2, "tool_use")]  # fmt: skip
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call_a",
                                          "name": "get_weather", "input": {}}  # fmt: skip
    json_deltas = {
        d["index"]: d["delta"]["partial_json"]
        for k, d in seq
        if k == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    }
    assert {i: json.loads(p) for i, p in json_deltas.items()} == {
        1: {"city": "Paris"}, 2: {"city": "Rome"}}  # fmt: skip
    # Blocks never interleave: each stop comes before the next start.
    order = [(k, d.get("index")) for k, d in seq if k.startswith("content_block_")]
    opened: set[int] = set()
    for kind, index in order:
        if kind == "content_block_start":
            assert not opened, f"block {index} opened while {opened} still open"
            opened.add(index)  # type: ignore[arg-type]
        elif kind == "content_block_stop":
            opened.discard(index)  # type: ignore[arg-type]
        else:
            assert index in opened
    assert stream.stop_reason == "tool_use"


async def test_the_client_accumulates_tool_use() -> None:
    _, raw = await translate(TOOLS)
    _, final = await read_back(raw)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    paris, rome = final.content[1], final.content[2]
    assert isinstance(paris, anthropic.types.ToolUseBlock)
    assert isinstance(rome, anthropic.types.ToolUseBlock)
    assert (paris.id, paris.name, paris.input) == ("call_a", "get_weather", {"city": "Paris"})
    assert rome.input == {"city": "Rome"}
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 25)


async def test_broken_tool_arguments_still_parse_in_the_client() -> None:
    chunks = [chunk({"tool_calls": [call(0, id="c", name="f", args='{"a": ')]}),
              chunk({}, "length")]  # fmt: skip
    _, raw = await translate(chunks)
    _, final = await read_back(raw)
    block = final.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.input == {UNPARSED_ARGUMENTS: '{"a": '}
    assert final.stop_reason == "max_tokens"


async def test_a_client_stop_sequence_is_reported() -> None:
    chunks = [chunk({"content": "one two"}), chunk({}, "stop", stop_reason="END")]
    stream, raw = await translate(chunks, stop_sequences=["END"])
    delta = next(d for k, d in events(raw) if k == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert stream.stop_sequence == "END"


async def test_without_a_usage_chunk_output_tokens_are_counted_from_chunks() -> None:
    _, raw = await translate(TEXT[:-1], input_tokens=9)
    delta = next(d for k, d in events(raw) if k == "message_delta")
    assert delta["usage"] == {"input_tokens": 9, "output_tokens": 2}


async def test_an_empty_stream_still_starts_and_stops_the_message() -> None:
    _, raw = await translate([])
    assert [k for k, _ in events(raw)] == ["message_start", "message_delta", "message_stop"]


async def test_an_error_mid_stream_ends_it_with_an_anthropic_error_event() -> None:
    stream, raw = await translate(TEXT[:3], UpstreamUnavailable("replica went away"))
    seq = events(raw)
    assert [k for k, _ in seq][-1] == "error"
    assert "message_stop" not in [k for k, _ in seq]
    assert seq[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "replica went away"},
    }
    assert stream.failed is not None
    # The client surfaces it as an exception, after the text it already received.
    received: list[str] = []

    async def read() -> None:
        async with client_over(raw).messages.stream(
            model="coe", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            async for text in s.text_stream:
                received.append(text)

    with pytest.raises(anthropic.APIStatusError, match="replica went away"):
        await read()
    assert "".join(received) == "Hello"


async def test_an_in_band_error_object_becomes_an_error_event() -> None:
    bad = {"error": {"message": "context too long", "type": "BadRequestError", "code": 400}}
    _, raw = await translate([TEXT[0], bad])
    kind, data = events(raw)[-1]
    assert kind == "error"
    assert data["error"] == {"type": "invalid_request_error", "message": "context too long"}


async def test_ping_is_ignored_by_the_client() -> None:
    _, raw = await translate(TEXT)
    first, rest = raw.split(b"\n\n", 1)
    _, final = await read_back(first + b"\n\n" + PING + rest)
    assert final.content[0].type == "text"


async def test_closing_the_translator_closes_the_source() -> None:
    closed = []

    async def endless() -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                yield chunk({"content": "x"})
        finally:
            closed.append(True)

    source_iter = endless()
    stream = MessageStream(source_iter, model="coe")
    iterator = stream.__aiter__()
    await iterator.__anext__()
    await iterator.__anext__()
    await stream.aclose()
    assert closed == [True]
