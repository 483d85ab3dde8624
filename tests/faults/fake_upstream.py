"""A scriptable, misbehaving OpenAI-compatible upstream: a real server process for fault tests.

Plain asyncio streams and a minimal HTTP/1.1 server (no framework), so every fault is under
the test's control down to the byte: a half-sent body, a connection closed mid-chunk, a
``content-encoding`` that lies. Each chat request's behaviour is chosen by its prompt: the
last message containing ``fault:NAME[:ARG]`` (anywhere in its text) asks for

=========================  ==================================================================
``ok``                     a normal answer (the default): JSON, or an SSE stream of 4 tokens
``hang``                   never answers; waits until the client hangs up
``slow_first_byte:S``      waits S seconds (default 5), then answers normally
``slow_stream:S``          streams with S seconds (default 1) between chunks
``garbage``                200 with an HTML body (not JSON, not an event stream)
``gzip_junk``              200 with ``content-encoding: gzip`` and bytes that are not gzip
``midstream_close``        starts the answer, then closes the connection mid-body
``unbounded_event:N``      a stream whose one event never ends (N bytes, default 20 MB,
                           until the client hangs up); non-streamed: a JSON body of N bytes
``status:CODE``            HTTP CODE (default 500) whose error text holds secrets
                           (:data:`SECRET`, an internal URL, a stack trace)
=========================  ==================================================================

A request without ``fault:`` gets the server's default, which ``POST /control`` sets:
``{"default": "fault:hang"}`` (or ``null``), or a random mix per call:
``{"mix": {"hang": 0.02, "garbage": 0.03, ...}, "seed": 1}`` (probabilities per fault; the
rest is ``ok``). ``GET /stats`` answers the counters: chat requests, per fault, connections
open now, and streams the client cut off (``aborted``). ``GET /health`` answers 200 (or the
``health`` status set through ``/control``).

Run::

    python tests/faults/fake_upstream.py --port 0   # prints "fake upstream listening on URL"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: What a ``status`` fault leaks in its error text; a gateway must never relay it.
SECRET = "sk-upstream-SECRET-7f3a"
_LEAK = (
    f"Internal error: CUDA OOM at /srv/models/secret-weights (api_key={SECRET}, "
    "peer http://10.11.12.13:8000/internal)\nTraceback (most recent call last):\n"
    '  File "/opt/vllm/engine.py", line 42, in step\nRuntimeError: boom'
)
_CREATED = int(time.time())
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}  # fmt: skip
FAULTS = ("ok", "hang", "slow_first_byte", "slow_stream", "garbage", "gzip_junk",
          "midstream_close", "unbounded_event", "status")  # fmt: skip


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": _CREATED,
           "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}]}  # fmt: skip
    return b"data: " + _dumps(obj) + b"\n\n"


def _completion(model: str) -> bytes:
    return _dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": _CREATED, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine answer"},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    })  # fmt: skip


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Close(Exception):
    """End the connection now (after a fault that leaves it unusable)."""


@dataclass
class FakeUpstream:
    """The server's state: its default behaviour and its counters."""

    default: str | None = None
    mix: dict[str, float] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    health: int = 200
    counts: Counter[str] = field(default_factory=Counter)
    open_connections: int = 0

    def choose(self, req: dict[str, Any]) -> str:
        """The ``fault:...`` spec for this request."""
        messages = req.get("messages") or []
        for message in reversed(messages if isinstance(messages, list) else []):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and "fault:" in content:
                return content[content.index("fault:") + 6 :].split()[0]
        if self.mix:
            x = self.rng.random()
            for name, p in self.mix.items():
                if x < p:
                    return name
                x -= p
            return "ok"
        return (self.default or "fault:ok").removeprefix("fault:")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after another until it closes or a fault ends it."""
        self.open_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await self._one(head, reader, writer)
                await writer.drain()
        except (Close, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]
        if path == "/health":
            return self._json(writer, self.health, {"status": "ok"})
        if path == "/stats":
            return self._json(writer, 200, {"counts": dict(self.counts),
                                            "open_connections": self.open_connections})  # fmt: skip
        if path == "/control" and method == "POST":
            ctl = json.loads(body or b"{}")
            if "default" in ctl:
                self.default = ctl["default"]
            if "mix" in ctl:
                self.mix = dict(ctl["mix"] or {})
            if "seed" in ctl:
                self.rng.seed(ctl["seed"])
            if "health" in ctl:
                self.health = int(ctl["health"])
            if ctl.get("reset"):
                self.counts.clear()
            return self._json(writer, 200, {"ok": True})
        if path != "/v1/chat/completions":
            return self._json(writer, 404, {"error": {"message": "not found"}})
        req = json.loads(body)
        spec = self.choose(req)
        name, _, arg = spec.partition(":")
        self.counts["chat"] += 1
        self.counts[name] += 1
        await self._chat(name, arg, req, reader, writer)

    def _json(self, writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        body = _dumps(obj)
        writer.write(_head(status, {"content-type": "application/json",
                                    "content-length": str(len(body))}) + body)  # fmt: skip

    async def _chat(
        self, name: str, arg: str, req: dict[str, Any], reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:  # fmt: skip
        model = str(req.get("model") or "fake")
        stream = bool(req.get("stream"))
        if name == "hang":
            await reader.read()  # until the client hangs up (EOF)
            raise Close
        if name == "slow_first_byte":
            await asyncio.sleep(float(arg or 5))
        if name == "garbage":
            body = b"<html><body>502 Bad Gateway (nginx)</body></html>"
            writer.write(_head(200, {"content-type": "text/html",
                                     "content-length": str(len(body))}) + body)  # fmt: skip
            return
        if name == "gzip_junk":
            body = b"this is not gzip at all \x00\x01\x02" * 8
            kind = "text/event-stream" if stream else "application/json"
            writer.write(_head(200, {"content-type": kind, "content-encoding": "gzip",
                                     "content-length": str(len(body))}) + body)  # fmt: skip
            return
        if name == "status":
            code = int(arg or 500)
            self._json(writer, code, {"error": {"message": _LEAK, "type": "InternalServerError",
                                                "param": None, "code": code}})  # fmt: skip
            return
        if name == "unbounded_event":
            await self._unbounded(int(arg or 20_000_000), model, stream, writer)
            return
        if not stream:
            body = _completion(model)
            if name == "midstream_close":
                writer.write(_head(200, {"content-type": "application/json",
                                         "content-length": str(len(body))}))  # fmt: skip
                writer.write(body[: len(body) // 2])
                await writer.drain()
                raise Close
            writer.write(_head(200, {"content-type": "application/json",
                                     "content-length": str(len(body))}) + body)  # fmt: skip
            return
        writer.write(_head(200, {"content-type": "text/event-stream",
                                 "transfer-encoding": "chunked"}))  # fmt: skip
        events = [_event(model, {"role": "assistant", "content": ""})]
        events += [_event(model, {"content": f"word{i} "}) for i in range(4)]
        events += [_event(model, {}, "stop"), b"data: [DONE]\n\n"]
        gap = float(arg or 1) if name == "slow_stream" else 0.0
        for i, event in enumerate(events):
            if name == "midstream_close" and i == 2:
                writer.write(_chunk(b'data: {"id":"chatcmpl-fake","obj'))
                await writer.drain()
                raise Close
            writer.write(_chunk(event))
            if gap:
                await writer.drain()
                await asyncio.sleep(gap)
        writer.write(b"0\r\n\r\n")

    async def _unbounded(
        self, size: int, model: str, stream: bool, writer: asyncio.StreamWriter
    ) -> None:
        piece = b"x" * 65536
        if not stream:
            writer.write(_head(200, {"content-type": "application/json",
                                     "content-length": str(size)}))  # fmt: skip
            prefix = b'{"choices":[],"padding":"'
            writer.write(prefix)
            left = size - len(prefix) - 2
        else:
            writer.write(_head(200, {"content-type": "text/event-stream",
                                     "transfer-encoding": "chunked"}))  # fmt: skip
            writer.write(_chunk(_event(model, {"role": "assistant", "content": ""})))
            writer.write(_chunk(b'data: {"never":"ending'))
            left = size
        try:
            while left > 0:
                part = piece[: min(left, len(piece))]
                writer.write(_chunk(part) if stream else part)
                left -= len(part)
                await writer.drain()
        except ConnectionError:
            self.counts["aborted"] += 1
            raise Close from None
        writer.write(b'"}' if not stream else _chunk(b'"}\n\n') + b"0\r\n\r\n")


async def serve(host: str, port: int, fake: FakeUpstream) -> None:
    """Listen on ``host:port`` (0: a free port), print the URL, serve until SIGTERM."""
    server = await asyncio.start_server(fake.handle, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"fake upstream listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--default", default=None, help="fault for requests that name none")
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, args.port, FakeUpstream(default=args.default)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
