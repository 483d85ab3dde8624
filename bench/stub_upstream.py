"""A fast, canned OpenAI-compatible upstream for benchmarks and tests.

Plain asyncio streams and a minimal HTTP/1.1 implementation (no framework), so that
the stub costs about 0.1 ms of CPU per request (syscalls included; answers are encoded
once per model name) and is never what a benchmark measures. It answers:

* ``GET /health`` -> ``200 {"status": "ok"}``
* ``GET /v1/models`` -> one model card (``stub``)
* ``POST /v1/chat/completions`` -> a canned ``chat.completion`` (the request's ``model``
  echoed), or with ``"stream": true`` an SSE stream (``text/event-stream``, chunked
  transfer encoding): a role chunk, ``--tokens`` content chunks, a finish chunk, a usage
  chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``.

Connections are kept alive (HTTP/1.1 default) unless the client sends
``Connection: close``; request bodies may use ``Content-Length`` or chunked encoding.
Anything else gets an OpenAI-style error body (400/404/405).

Run::

    python bench/stub_upstream.py --port 0        # prints "stub listening on http://HOST:PORT"

The listening line is the only thing written to stdout, and it is flushed at once, so
a parent process can start the stub on port 0 and read the port it got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

#: Default number of content chunks in a streamed answer.
DEFAULT_TOKENS = 4
_TEXT = "Here is a stub answer."
_CREATED = int(time.time())
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large"}  # fmt: skip
_MAX_BODY = 8 * 1024 * 1024


class BadRequest(Exception):
    """The request could not be parsed; answer 400 and close."""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error(message: str, kind: str = "invalid_request_error") -> bytes:
    return _dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


class Stub:
    """The canned answers; encoded once per model name and reused."""

    def __init__(self, tokens: int = DEFAULT_TOKENS, delay_s: float = 0.0) -> None:
        self.tokens = tokens
        self.delay_s = delay_s
        self._completions: dict[str, bytes] = {}
        self._streams: dict[tuple[str, bool], bytes] = {}

    def completion(self, model: str) -> bytes:
        """The non-streaming answer for ``model``, as JSON bytes."""
        cached = self._completions.get(model)
        if cached is None:
            cached = _dumps({
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": _CREATED,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": _TEXT},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
            })  # fmt: skip
            if len(self._completions) < 64:
                self._completions[model] = cached
        return cached

    def stream_body(self, model: str, usage: bool) -> bytes:
        """The whole streamed answer for ``model``, already in chunked transfer framing."""
        key = (model, usage)
        cached = self._streams.get(key)
        if cached is None:
            cached = b"".join(_http_chunk(e) for e in self._events(model, usage)) + b"0\r\n\r\n"
            if len(self._streams) < 64:
                self._streams[key] = cached
        return cached

    def _events(self, model: str, usage: bool) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                    "created": _CREATED, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}  # fmt: skip

        words = _TEXT.split(" ")
        parts = [("" if i == 0 else " ") + words[i % len(words)] for i in range(self.tokens)]
        objs = [chunk({"role": "assistant", "content": ""})]
        objs += [chunk({"content": p}) for p in parts]
        objs.append(chunk({}, "stop"))
        if usage:
            objs.append({"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                         "created": _CREATED, "model": model, "choices": [],
                         "usage": {"prompt_tokens": 12, "completion_tokens": self.tokens,
                                   "total_tokens": 12 + self.tokens}})  # fmt: skip
        return [b"data: " + _dumps(o) + b"\n\n" for o in objs] + [b"data: [DONE]\n\n"]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests one after another until it closes."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                try:
                    keep_alive = await self._one(head, reader, writer)
                except BadRequest as exc:
                    _respond(writer, 400, _error(str(exc)), keep_alive=False)
                    keep_alive = False
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise BadRequest("malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("malformed header line")
            headers[name.strip().lower()] = value.strip()
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        body = await _read_body(headers, reader)
        path = target.split("?", 1)[0]

        if path == "/health":
            if method not in ("GET", "HEAD"):
                return _not_allowed(writer, keep_alive)
            _respond(writer, 200, b'{"status":"ok"}', keep_alive=keep_alive)
            return keep_alive
        if path == "/v1/models":
            if method != "GET":
                return _not_allowed(writer, keep_alive)
            card = {"id": "stub", "object": "model", "created": _CREATED, "owned_by": "stub"}
            _respond(writer, 200, _dumps({"object": "list", "data": [card]}), keep_alive)
            return keep_alive
        if path != "/v1/chat/completions":
            _respond(writer, 404, _error(f"Unknown route: {method} {path}"), keep_alive)
            return keep_alive
        if method != "POST":
            return _not_allowed(writer, keep_alive)
        try:
            req = json.loads(body)
        except ValueError:
            _respond(writer, 400, _error("Request body is not valid JSON."), keep_alive)
            return keep_alive
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            _respond(writer, 400, _error("Missing required parameter: 'messages'."), keep_alive)
            return keep_alive
        model = str(req.get("model") or "stub")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if req.get("stream"):
            opts = req.get("stream_options")
            usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
            head_out = (
                "HTTP/1.1 200 OK\r\n"
                "content-type: text/event-stream\r\n"
                "cache-control: no-cache\r\n"
                "transfer-encoding: chunked\r\n"
                f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
            ).encode()
            writer.write(head_out + self.stream_body(model, usage))
            return keep_alive
        _respond(writer, 200, self.completion(model), keep_alive)
        return keep_alive


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _read_body(headers: dict[str, str], reader: asyncio.StreamReader) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest("malformed chunk size") from None
            if size == 0:
                # Trailers (if any) end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise BadRequest("request body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = headers.get("content-length")
    if not length:
        return b""
    if not length.isdigit() or int(length) > _MAX_BODY:
        raise BadRequest("bad content-length")
    return await reader.readexactly(int(length))


def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, keep_alive: bool) -> None:
    writer.write(
        (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode()
        + body
    )


def _not_allowed(writer: asyncio.StreamWriter, keep_alive: bool) -> bool:
    _respond(writer, 405, _error("Method not allowed."), keep_alive)
    return keep_alive


async def serve(host: str, port: int, stub: Stub) -> None:
    """Listen on ``host:port`` (0 = any free port), print the URL, serve until cancelled."""
    server = await asyncio.start_server(stub.handle, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"stub listening on http://{host}:{bound}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="content chunks per stream")
    p.add_argument("--delay-ms", type=float, default=0.0, help="artificial upstream latency")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the stub until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    stub = Stub(tokens=max(1, args.tokens), delay_s=args.delay_ms / 1000)
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port, stub))
    return 0


if __name__ == "__main__":
    sys.exit(main())
