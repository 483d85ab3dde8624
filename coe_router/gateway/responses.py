"""HTTP responses the gateway builds: SSE streams, and answers replayed from the cache."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from coe_router.shared.cache import CachedAnswer
from coe_router.sse import ClosableStream

#: What every stream sends: no caching, and no buffering by proxies (nginx honours this).
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class SSEResponse(StreamingResponse):
    """A streaming response that always closes its iterator, even when the client vanishes.

    Starlette cancels the sending task on disconnect; the generator may then sit
    suspended at a ``yield`` until garbage collection. Closing it here releases
    the upstream connection at once, which makes vLLM abort the generation.
    """

    media_type = "text/event-stream"

    def __init__(self, content: ClosableStream, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(content, headers={**(headers or {}), **STREAM_HEADERS})
        self._stream = content

    @property
    def stream(self) -> ClosableStream:
        """The body (for a route that re-frames another route's stream)."""
        return self._stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.aclose()


def replay(entry: CachedAnswer, headers: dict[str, str]) -> Response:
    """Answer from the cache: JSON as it was, or the stream event by event."""
    out = {**entry.headers, **headers, "x-coe-cache": "hit"}
    if entry.kind == "json":
        return Response(entry.body, media_type="application/json", headers=out)
    return SSEResponse(_events(entry.body), headers=out)


async def _events(body: bytes) -> AsyncGenerator[bytes, None]:
    # One event per write, as the expert sent them; a client sees a normal stream.
    for event in body.split(b"\n\n"):
        if event:
            yield event + b"\n\n"
