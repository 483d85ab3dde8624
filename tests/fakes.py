"""A fake vLLM OpenAI server for ``httpx.MockTransport``: one object, many replicas by host.

Each replica (``http://HOST:PORT``) has a :class:`Behaviour` that tests flip to
make it healthy, down, slow, broken mid-stream or a sender of garbage. Every
request the fake receives is recorded, so tests can check what reached the expert.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Behaviour:
    """How one fake replica acts."""

    mode: str = "ok"  # ok | down | garbage | status | not_chat | midstream | no_done | hang
    status: int = 500
    delay_s: float = 0.0  # before the response starts
    chunk_delay_s: float = 0.0  # between stream chunks
    tokens: int = 3
    text: str = "hello"
    split: bool = False  # send every stream write in two halves, as TCP may deliver it


@dataclass
class Received:
    """One request the fake saw."""

    url: str
    body: dict[str, Any]


@dataclass
class FakeVLLM:
    """Handler for ``httpx.MockTransport`` emulating vLLM's OpenAI server."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    closed_streams: int = 0
    cancelled: int = 0
    #: Emulate the read timeout a real transport enforces (``MockTransport`` has none): a
    #: wait longer than the request's read timeout raises ``httpx.ReadTimeout`` after it.
    honour_timeouts: bool = False
    #: Set when a chat request arrives, so tests can wait for one without polling.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, base_url: str) -> Behaviour:
        """The behaviour of the replica at ``base_url`` (created on first use)."""
        host = httpx.URL(base_url).netloc.decode()
        return self.behaviours.setdefault(host, Behaviour())

    def transport(self) -> httpx.MockTransport:
        """A transport that routes every request to this fake."""
        return httpx.MockTransport(self.handle)

    def bodies_for(self, base_url: str) -> list[dict[str, Any]]:
        """Chat bodies that reached the replica at ``base_url``."""
        host = httpx.URL(base_url).netloc.decode()
        return [r.body for r in self.received if httpx.URL(r.url).netloc.decode() == host]

    async def pause(self, seconds: float, request: httpx.Request) -> None:
        """Sleep ``seconds``, or time out like httpcore would (see :attr:`honour_timeouts`)."""
        timeout = request.extensions.get("timeout", {}).get("read")
        if self.honour_timeouts and timeout is not None and seconds > timeout:
            await asyncio.sleep(timeout)
            raise httpx.ReadTimeout("timed out", request=request)
        await asyncio.sleep(seconds)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        b = self.of(str(request.url))
        if b.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(await request.aread())
        self.received.append(Received(str(request.url), body))
        self.arrived.set()
        try:
            if b.mode == "hang":
                await self.pause(3600, request)
            if b.delay_s:
                await self.pause(b.delay_s, request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if b.mode == "status":
            return httpx.Response(
                b.status,
                json={"error": {"message": f"fake error {b.status}", "type": "BadRequestError",
                                "param": "max_tokens", "code": b.status}},
            )  # fmt: skip
        if b.mode == "garbage":
            return httpx.Response(200, content=b"<html>not json</html>")
        if b.mode == "not_chat":
            return httpx.Response(200, json={"hello": "world"})
        if body.get("stream"):
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=_Stream(self, b, body, request),
            )
        return httpx.Response(200, json=completion(body, b.text))


def completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    """A vLLM-shaped chat completion answering ``text``."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }  # fmt: skip


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One SSE chunk in vLLM's format."""
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class _Stream(httpx.AsyncByteStream):
    def __init__(
        self, fake: FakeVLLM, b: Behaviour, body: dict[str, Any], request: httpx.Request
    ) -> None:
        self._fake, self._b, self._model, self._request = fake, b, body["model"], request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self._writes():
            if self._b.split and len(data) > 1:
                yield data[: len(data) // 2]
                yield data[len(data) // 2 :]
            else:
                yield data

    async def _writes(self) -> AsyncIterator[bytes]:
        yield chunk(self._model, {"role": "assistant", "content": ""})
        for i in range(self._b.tokens):
            if self._b.chunk_delay_s:
                await self._fake.pause(self._b.chunk_delay_s, self._request)
            if self._b.mode == "midstream" and i == 1:
                yield b'data: {"partial'  # half an event, then the connection breaks
                raise httpx.ReadError("connection reset by peer")
            yield chunk(self._model, {"content": f"{self._b.text}{i} "})
        yield chunk(self._model, {}, finish="stop")
        if self._b.mode != "no_done":
            yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        self._fake.closed_streams += 1
