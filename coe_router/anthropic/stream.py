"""An expert's OpenAI chat chunks -> Anthropic's Messages stream events.

Anthropic's stream is a sequence of typed events, each sent as
``event: <type>\\ndata: {json}\\n\\n``::

    message_start
      content_block_start (text)      content_block_delta (text_delta)*        content_block_stop
      content_block_start (tool_use)  content_block_delta (input_json_delta)   content_block_stop
      ...
    message_delta (stop_reason, stop_sequence, usage)
    message_stop

Blocks are numbered in order from 0 and never interleave, so a switch between text and
a tool call (or from one tool call to the next) closes the open block first.

Tool-call arguments are collected and sent as one ``input_json_delta`` when the call's
block closes: the ``anthropic`` client parses every fragment as partial JSON and fails on
a prefix that can never become valid, which small models do write. Arguments that are not
a JSON object are wrapped as ``{"_unparsed_arguments": "..."}``, as in the non-streamed
answer, so both paths give the client the same ``input``.

An error after the stream began (the expert failing, or sending an in-band error object)
ends it with an ``error`` event in Anthropic's shape; the status code is long sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from coe_router.anthropic.errors import error_body
from coe_router.anthropic.translate import json_object, message_id, stop_reason, tool_input
from coe_router.anthropic.types import StopReason
from coe_router.errors import CoEError

#: A keep-alive event the client ignores (Anthropic sends these too).
PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def event(kind: str, payload: dict[str, Any]) -> bytes:
    """One Anthropic stream event: ``event: <kind>`` and its JSON (``type`` = ``kind``)."""
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"), ensure_ascii=False)
    return f"event: {kind}\ndata: {data}\n\n".encode()


def error_event(status: int, message: str) -> bytes:
    """The ``error`` event for a failure with HTTP status ``status``."""
    return event("error", {"error": error_body(status, message)["error"]})


class ChunkSource(Protocol):
    """Parsed OpenAI chunks that can be stopped early (an async generator is one)."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None:
        """Stop producing and release what feeds the chunks."""
        ...


@dataclass
class _ToolCall:
    """A tool call being streamed: OpenAI sends its id and name first, then arguments."""

    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)
    block: int | None = None  # its content block, once opened


class MessageStream:
    """Translate OpenAI chat chunks (parsed JSON objects) to Anthropic stream events
    (bytes), one choice (index 0).

    After iteration, :attr:`usage_in`, :attr:`usage_out`, :attr:`stop_reason` and
    :attr:`failed` describe the answer (for token limits and metrics). Closing the
    translator closes ``chunks``.
    """

    def __init__(
        self,
        chunks: ChunkSource,
        *,
        model: str,
        stop_sequences: list[str] | None = None,
        input_tokens: int = 0,
    ) -> None:
        self._chunks = chunks
        self._model = model
        self._stop_sequences = stop_sequences
        #: Prompt tokens (the expert's count once its usage chunk arrived).
        self.usage_in = input_tokens
        #: Completion tokens: the expert's count, else the number of content chunks.
        self.usage_out = 0
        self.cached_in: int | None = None
        self.stop_reason: StopReason | None = None
        self.stop_sequence: str | None = None
        #: The error that ended the stream early, if one did.
        self.failed: CoEError | None = None
        #: Whether the whole message went out (``message_stop`` included).
        self.complete = False
        self._reported_out: int | None = None
        self._next_block = 0
        self._open: int | None = None  # the open block's index
        self._open_tool: _ToolCall | None = None
        self._tools: dict[int, _ToolCall] = {}
        self._events = self._run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Stop: close the event generator and the chunk source."""
        await self._events.aclose()
        await self._chunks.aclose()

    async def _run(self) -> AsyncGenerator[bytes, None]:
        started = False
        finish: object = None
        matched: object = None
        try:
            async for chunk in self._chunks:
                _raise_in_band(chunk)
                if not started:
                    started = True
                    yield self._message_start(chunk.get("id"))
                self._read_usage(chunk.get("usage"))
                choices = chunk.get("choices")
                choice = choices[0] if isinstance(choices, list) and choices else None
                if not isinstance(choice, dict):
                    continue
                for out in self._delta(json_object(choice.get("delta"))):
                    yield out
                if choice.get("finish_reason") is not None:
                    finish, matched = choice["finish_reason"], choice.get("stop_reason")
        except CoEError as exc:
            self.failed = exc
            yield error_event(exc.status_code, exc.message)
            return
        if not started:
            yield self._message_start(None)
        for out in self._close_block():
            yield out
        self.stop_reason, self.stop_sequence = stop_reason(finish, matched, self._stop_sequences)
        if self.stop_reason == "end_turn" and self._tools:
            self.stop_reason = "tool_use"  # some servers end a tool call with "stop"
        if self._reported_out is not None:
            self.usage_out = self._reported_out
        usage: dict[str, Any] = {"input_tokens": self.usage_in, "output_tokens": self.usage_out}
        if self.cached_in is not None:
            usage["cache_read_input_tokens"] = self.cached_in
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        yield event("message_delta", {"delta": delta, "usage": usage})
        self.complete = True
        yield event("message_stop", {})

    def _message_start(self, openai_id: object) -> bytes:
        message: dict[str, Any] = {
            "id": message_id(openai_id), "type": "message", "role": "assistant",
            "model": self._model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.usage_in, "output_tokens": 0},
        }  # fmt: skip
        return event("message_start", {"message": message})

    def _read_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        if isinstance(usage.get("prompt_tokens"), int):
            self.usage_in = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            self._reported_out = usage["completion_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            self.cached_in = details["cached_tokens"]

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        text = delta.get("content")
        calls = delta.get("tool_calls")
        if (isinstance(text, str) and text) or (isinstance(calls, list) and calls):
            self.usage_out += 1  # a chunk is about a token; the usage chunk overrides this
        if isinstance(text, str) and text:
            if self._open is None or self._open_tool is not None:
                out += self._close_block()
                out.append(self._start_block({"type": "text", "text": ""}))
            out.append(self._block_delta({"type": "text_delta", "text": text}))
        for raw in calls if isinstance(calls, list) else []:
            if isinstance(raw, dict):
                out += self._tool_delta(raw)
        return out

    def _tool_delta(self, raw: dict[str, Any]) -> list[bytes]:
        given = raw.get("index")
        index = given if isinstance(given, int) else len(self._tools)
        call = self._tools.get(index)
        out: list[bytes] = []
        if call is None:
            call = self._tools[index] = _ToolCall()
        function = json_object(raw.get("function"))
        if raw.get("id"):
            call.id = call.id or str(raw["id"])
        if function.get("name"):
            call.name = (call.name or "") + str(function["name"])
        if isinstance(function.get("arguments"), str):
            call.arguments.append(function["arguments"])
        # A call's block opens once its name is known; its arguments are sent when it closes.
        # (OpenAI streams parallel calls one after another, never interleaved.)
        if call.block is None and call.name:
            out += self._close_block()
            call.block = self._next_block
            self._open_tool = call
            out.append(self._start_block({
                "type": "tool_use", "id": call.id or f"toolu_{uuid.uuid4().hex}",
                "name": call.name, "input": {},
            }))  # fmt: skip
        return out

    def _start_block(self, block: dict[str, Any]) -> bytes:
        self._open = self._next_block
        self._next_block += 1
        return event("content_block_start", {"index": self._open, "content_block": block})

    def _block_delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"index": self._open, "delta": delta})

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        out: list[bytes] = []
        tool = self._open_tool
        if tool is not None:
            arguments = tool_input("".join(tool.arguments))
            if arguments:
                partial = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
                out.append(self._block_delta({"type": "input_json_delta",
                                              "partial_json": partial}))  # fmt: skip
        out.append(event("content_block_stop", {"index": self._open}))
        self._open, self._open_tool = None, None
        return out


def _raise_in_band(chunk: dict[str, Any]) -> None:
    """An error object sent in the stream (vLLM's and our relay's) -> a raised CoEError."""
    err = chunk.get("error")
    if isinstance(err, dict):
        message, code = err.get("message"), err.get("code")
    elif chunk.get("object") == "error":
        message, code = chunk.get("message"), chunk.get("code")
    else:
        return
    status = code if isinstance(code, int) and 400 <= code < 600 else 502
    raise CoEError(str(message or "the expert failed mid-stream"), status_code=status)
