"""An OpenAI-compatible upstream whose behaviour is chosen by the request's ``model``.

For the client-side fault tests (``tests/faults``): each expert of the test catalog has
its own ``served_model_name``, which the gateway sends as ``model``:

* ``slow-stream``: an SSE stream, one content event every 0.25 s, for 60 s;
* ``short-stream``: the same, six events (1.5 s), then finish, ``[DONE]``;
* ``slow-json``: a chat completion after 60 s;
* ``spaces``: at once, content ``"answer:"`` and 800 spaces (the vote regex probe);
* ``commas``: at once, content ``1,2,3,...,1500`` (a number past Python's int limit);
* anything else: at once, ``"Hello."``.

Every answer closes its connection (no keep-alive: simple framing). Run::

    python tests/faults/canned_upstream.py   # prints "canned listening on http://HOST:PORT"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

TICK_S = 0.25
CONTENT = {
    "spaces": "answer:" + " " * 800,
    "commas": ",".join(str(i) for i in range(1, 1501)),
}


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    obj = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 0,
           "model": model, "choices": [choice]}  # fmt: skip
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _completion(model: str, content: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-canned", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }).encode()  # fmt: skip


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        pairs = (h.partition(":") for h in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        if path == "/health":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            return
        req = json.loads(body or b"{}")
        model = str(req.get("model"))
        if req.get("stream"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"connection: close\r\n\r\n")  # fmt: skip
            writer.write(_chunk(model, {"role": "assistant", "content": ""}))
            ticks = 6 if model == "short-stream" else int(60 / TICK_S)
            for i in range(ticks):
                await asyncio.sleep(TICK_S if model.endswith("-stream") else 0)
                writer.write(_chunk(model, {"content": f"t{i} "}))
                await writer.drain()
            writer.write(_chunk(model, {}, "stop") + b"data: [DONE]\n\n")
            return
        if model == "slow-json":
            await asyncio.sleep(60)
        data = _completion(model, CONTENT.get(model, "Hello."))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     + f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
                     + data)  # fmt: skip
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()


async def _main() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"canned listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
