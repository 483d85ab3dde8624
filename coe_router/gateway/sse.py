"""Server-sent events: relaying an expert's stream, with errors sent in-band."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from coe_router.errors import UpstreamBadResponse, UpstreamError
from coe_router.experts.expert import UpstreamStream

DONE = b"data: [DONE]\n\n"
#: What ends an event: a blank line, in any of the three line-ending styles SSE allows.
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")


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
    """Pass upstream events through as each completes; end every stream with ``[DONE]``.

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
        # Only whole events are passed on. If the expert breaks off mid-event, its half is
        # dropped: a client parser would otherwise join it to our error event (or dispatch
        # it as an event of its own) and fail on invalid JSON.
        pending = b""
        tail = b""
        try:
            async for chunk in self._upstream:
                pending += chunk
                cut = _complete_events(pending)
                if not cut:
                    continue
                events, pending = pending[:cut], pending[cut:]
                if not tail:
                    self._on_first_byte()
                tail = (tail + events)[-32:]
                yield events
            if pending.strip() == DONE.strip():  # [DONE] without its blank line: complete it
                tail = DONE
                yield DONE
            if DONE.strip() not in tail:
                raise UpstreamBadResponse("the expert ended its stream without [DONE]")
            self._outcome = "200"
        except UpstreamError as exc:
            self._outcome = str(exc.status_code)
            yield sse_event(exc.to_body()) + DONE
        finally:
            await self._end()


async def data_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The ``data:`` payload of each whole event of an SSE byte stream, up to ``[DONE]``."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        cut = _complete_events(pending)
        if not cut:
            continue
        events, pending = pending[:cut], pending[cut:]
        for event in events.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n"):
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if not data:
                continue
            if data.strip() == b"[DONE]":
                return
            yield data.decode("utf-8", "replace")


def _complete_events(buffer: bytes) -> int:
    """Length of the prefix of ``buffer`` made of whole events (0 when none ends yet)."""
    return max((i + len(sep) for sep in _EVENT_ENDS if (i := buffer.rfind(sep)) >= 0), default=0)
