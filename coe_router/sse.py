"""Server-sent events, independent of HTTP: framing, relaying an expert's stream, tapping it.

* :func:`sse_event` / :data:`DONE`: ``data: {json}\n\n`` ... ``data: [DONE]\n\n``;
* :class:`EventSplitter`: an SSE byte stream cut into whole events, in linear time, with
  a cap on one event's size;
* :func:`data_events`: the ``data:`` payloads of an SSE byte stream;
* :class:`Relay`: whole upstream events passed on as they complete, errors sent in-band;
* :class:`StreamTap`: a bounded copy (:class:`Capture`) for the response cache and the usage
  for token limits, read on the side without buffering the stream;
* :class:`ClosableStream`: what every stream handed to a client is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

from coe_router.closing import EndOnce
from coe_router.errors import UpstreamBadResponse, UpstreamError
from coe_router.experts.expert import UpstreamStream
from coe_router.protocol import usage_tokens

DONE = b"data: [DONE]\n\n"
#: What ends an event: a blank line, in any of the three line-ending styles SSE allows.
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
#: The longest end minus one: how far back into old bytes an end may begin.
_OVERLAP = max(len(end) for end in _EVENT_ENDS) - 1
#: One event's size cap when the caller gives none (``COE_UPSTREAM__MAX_EVENT_BYTES``).
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


class ClosableStream(Protocol):
    """An SSE byte stream that can be stopped early: closing it releases what feeds it."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None:
        """Stop the stream and release its upstream (idempotent)."""
        ...


class Capture:
    """A copy of what a stream sent, for the response cache: nothing once it passes
    ``limit`` bytes (too big to cache), nothing at all when ``limit`` is None."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._parts: list[bytes] | None = [] if limit is not None else None
        self._size = 0

    def add(self, data: bytes) -> None:
        """Copy ``data`` while the copy stays within the limit."""
        if self._parts is None or self._limit is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._parts = None  # too big to cache: stop copying
        else:
            self._parts.append(data)

    @property
    def captured(self) -> bytes | None:
        """Everything copied, or None when not capturing or over the limit."""
        return None if self._parts is None else b"".join(self._parts)


def sse_event(payload: dict[str, Any]) -> bytes:
    """One ``data: {json}`` event."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class EventSplitter:
    """Cuts an SSE byte stream into whole events as bytes arrive.

    Each chunk is scanned once, plus the few bytes before it where an event end may
    begin, so the work is linear in the stream's length however the expert splits it.
    An unfinished event longer than ``max_event_bytes`` is an :class:`UpstreamBadResponse`
    (502): the expert is not sending SSE, and buffering it would have no bound.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._pending = bytearray()

    @property
    def pending(self) -> bytes:
        """The bytes of the event not finished yet."""
        return bytes(self._pending)

    def feed(self, chunk: bytes) -> bytes:
        """The whole events ``chunk`` completes, blank lines included (b"" when none)."""
        buf = self._pending
        start = max(0, len(buf) - _OVERLAP)
        buf += chunk
        cut = max((i + len(end) for end in _EVENT_ENDS if (i := buf.rfind(end, start)) >= 0),
                  default=0)  # fmt: skip
        events = b""
        if cut:
            events = bytes(buf[:cut])
            del buf[:cut]
        if len(buf) > self._max:
            buf.clear()
            raise UpstreamBadResponse(
                f"the expert sent an event larger than {self._max} bytes (or no event end)"
            )
        return events


class Relay:
    """Pass upstream events through as each completes; end every stream with ``[DONE]``.

    An error after the stream started cannot change the status code any more, so it
    is sent as an ``error`` event (OpenAI's shape), then ``[DONE]``; one upstream event
    over the stream's ``max_event_bytes`` is such an error (502), and ends the upstream
    connection. ``on_end`` is
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
        self._hung_up = False
        self._end = EndOnce(self._hang_up, lambda: self._on_end(self._outcome))
        self._events = self._relay()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Stop relaying: close the upstream stream and report the outcome (idempotent)."""
        await self._events.aclose()
        await self._end()

    async def _hang_up(self) -> None:
        if not self._hung_up:
            self._hung_up = True
            await self._upstream.aclose()

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        # Only whole events are passed on. If the expert breaks off mid-event, its half is
        # dropped: a client parser would otherwise join it to our error event (or dispatch
        # it as an event of its own) and fail on invalid JSON.
        splitter = EventSplitter(self._upstream.max_event_bytes)
        tail = b""
        try:
            async for chunk in self._upstream:
                events = splitter.feed(chunk)
                if not events:
                    continue
                if not tail:
                    self._on_first_byte()
                tail = (tail + events[-32:])[-32:]
                yield events
            if splitter.pending.strip() == DONE.strip():  # [DONE] without its blank line
                tail = DONE
                yield DONE
            if DONE.strip() not in tail:
                raise UpstreamBadResponse("the expert ended its stream without [DONE]")
            self._outcome = "200"
        except UpstreamError as exc:
            self._outcome = str(exc.status_code)
            # Hang up on the expert first: it may still be sending (an endless event).
            await self._hang_up()
            yield sse_event(exc.to_body()) + DONE
        finally:
            await self._end()


async def data_events(
    chunks: AsyncIterable[bytes], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> AsyncIterator[str]:
    """The ``data:`` payload of each whole event of an SSE byte stream, up to ``[DONE]``
    (an event over ``max_event_bytes`` raises :class:`UpstreamBadResponse`)."""
    splitter = EventSplitter(max_event_bytes)
    async for chunk in chunks:
        events = splitter.feed(chunk)
        if not events:
            continue
        for event in events.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n"):
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if not data:
                continue
            if data.strip() == b"[DONE]":
                return
            yield data.decode("utf-8", "replace")


class StreamTap:
    """Relay wrapper: copy (bounded), read usage, optionally hide the usage chunk."""

    def __init__(self, relay: Relay, *, capture_limit: int | None, hide_usage: bool) -> None:
        self._relay = relay
        self._hide_usage = hide_usage
        self._capture = Capture(capture_limit)
        #: ``usage.total_tokens`` of the stream, once its usage chunk went by.
        self.tokens: int | None = None
        self._events = self._run()

    @property
    def captured(self) -> bytes | None:
        """Everything sent to the client, or None when not capturing or over the limit."""
        return self._capture.captured

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Close the relay (and with it the upstream stream)."""
        await self._events.aclose()
        await self._relay.aclose()

    async def _run(self) -> AsyncGenerator[bytes, None]:
        async for data in self._relay:
            if b'"usage"' in data:
                data = self._read_usage(data)
            self._capture.add(data)
            if data:
                yield data

    def _read_usage(self, data: bytes) -> bytes:
        # The relay yields whole events; vLLM separates them with a blank line ("\n\n").
        events = data.split(b"\n\n")
        kept: list[bytes] = []
        for event in events:
            obj = _json_of(event) if b'"usage"' in event else None
            tokens = usage_tokens(obj)
            if tokens is not None:
                self.tokens = tokens
                if self._hide_usage and isinstance(obj, dict) and obj.get("choices") == []:
                    continue
            kept.append(event)
        return b"\n\n".join(kept)


def _json_of(event: bytes) -> object:
    line = event.strip()
    if not line.startswith(b"data:"):
        return None
    try:
        return json.loads(line[5:])
    except ValueError:
        return None
