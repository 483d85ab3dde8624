"""A fake vLLM that calls tools: for tool loops through the gateway (chat and Messages).

It answers like :class:`tests.fakes.FakeVLLM`, except that a request offering ``tools``
whose conversation is not answering a tool call gets a tool call back (streamed as
OpenAI streams them: id and name first, then the arguments in pieces), and
``POST /tokenize`` answers a count. Every request's headers are kept too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fakes import FakeVLLM, Received

#: The arguments every fake tool call sends.
ARGUMENTS = {"city": "Paris"}
#: What ``/tokenize`` answers.
TOKENIZED = 17


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-tool", "object": "chat.completion.chunk", "created": int(time.time()),
           "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@dataclass
class ToolCallingVLLM(FakeVLLM):
    """:class:`FakeVLLM` plus tool calls and ``/tokenize``."""

    headers: list[httpx.Headers] = field(default_factory=list)
    tokenized: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return await super().handle(request)
        self.headers.append(request.headers)
        body = json.loads(await request.aread())
        if request.url.path == "/tokenize":
            if self.of(str(request.url)).mode == "down":
                raise httpx.ConnectError("connection refused", request=request)
            self.tokenized.append(body)
            return httpx.Response(200, json={"count": TOKENIZED, "max_model_len": 2048,
                                             "tokens": list(range(TOKENIZED))})  # fmt: skip
        if (
            not body.get("tools")
            or body["messages"][-1]["role"] == "tool"
            or (self.of(str(request.url)).mode != "ok")
        ):
            return await super().handle(request)
        self.received.append(Received(str(request.url), body))
        call_id = f"chatcmpl-tool-{len(self.received)}"
        model = body["model"]
        if body.get("stream"):
            args = json.dumps(ARGUMENTS)
            parts = [
                _chunk(model, {"role": "assistant", "content": ""}),
                _chunk(model, {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                               "function": {"name": "get_weather",
                                                            "arguments": ""}}]}),
                _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": args[:5]}}]}),
                _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}),
                _chunk(model, {}, "tool_calls"),
                b"data: [DONE]\n\n",
            ]  # fmt: skip
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=b"".join(parts))  # fmt: skip
        return httpx.Response(200, json={
            "id": "chatcmpl-tool", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {
                    "name": "get_weather", "arguments": json.dumps(ARGUMENTS)}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
        })  # fmt: skip
