"""Server-sent events: relaying an expert's stream, with errors sent in-band."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from coe_router.errors import UpstreamBadResponse, UpstreamError
from coe_router.experts.expert import UpstreamStream

DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    """One ``data: {json}`` event."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    """A streaming response that always closes its iterator, even when the client vanishes.

    Starlette cancels the sending task on disconnect; the generator may then sit
    suspended at a ``yield`` until garbage collection. Closing it here releases
    the upstream connection at once, which makes vLLM abort the generation.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class Relay:
    """Pass upstream bytes through as they arrive; end every stream with ``[DONE]``.

    An error after the stream started cannot change the status code any more, so it
    is sent as an ``error`` event (OpenAI's shape), then ``[DONE]``. ``on_end`` is
    called exactly once with the outcome: ``"200"``, the error's status, or ``"499"``
    when the client left, also if iteration never began.
    """

    def __init__(
        self,
        upstream: UpstreamStream,
        *,
        on_first_byte: Callable[[], None],
        on_end: Callable[[str], None],
    ) -> None:
        self._upstream = upstream
        self._on_first_byte = on_first_byte
        self._on_end = on_end
        self._outcome = "499"
        self._ended = False
        self._events = self._relay()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Stop relaying: close the upstream stream and report the outcome (idempotent)."""
        await self._events.aclose()
        await self._end()

    async def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            await self._upstream.aclose()
        finally:
            self._on_end(self._outcome)

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        tail = b""
        first = True
        try:
            async for chunk in self._upstream:
                if first:
                    self._on_first_byte()
                    first = False
                tail = (tail + chunk)[-32:]
                yield chunk
            if DONE.strip() not in tail:
                raise UpstreamBadResponse("the expert ended its stream without [DONE]")
            self._outcome = "200"
        except UpstreamError as exc:
            self._outcome = str(exc.status_code)
            # Finish a half-written event before ours, so the client's parser stays in sync.
            sep = b"" if not tail or tail.endswith(b"\n\n") else b"\n\n"
            yield sep + sse_event(exc.to_body()) + DONE
        finally:
            await self._end()
