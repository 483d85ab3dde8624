"""One HTTP/1.1 connection of :mod:`coe_router.experts.http1`'s pool: an asyncio protocol
that parses responses with ``httptools`` as bytes arrive, with back-pressure, and waits
(each wait with its own timeout) for the reader.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, cast

import httptools
import httpx

#: Unread bytes a stream may buffer before the socket stops being read (back-pressure).
_HIGH_WATER = 1 << 20
#: Seconds an idle keep-alive connection is kept (httpx's default, which this replaces).
KEEPALIVE_EXPIRY_S = 5.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each kind of wait may take."""

    connect: float
    read: float
    write: float
    pool: float


class Connection(asyncio.Protocol):
    """One TCP connection; one request at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[Any] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._header_name = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.headers_done = False
        self._until_eof = False
        self.keep_alive = False
        self.complete = False
        self.lost: BaseException | None = None
        self._reading_paused = False
        #: When it went back to the pool (loop time).
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.lost = httpx.RemoteProtocolError(f"malformed HTTP response: {exc}")
            self.close()
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self.headers_done and self._until_eof and self.lost is None:
            self.complete = True
        if not self.complete and self.lost is None:
            detail = f": {exc}" if exc else ""
            self.lost = httpx.RemoteProtocolError(f"server disconnected{detail}")
        self.transport = None
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        # Asked here: once the message completes, the parser has already reset its state.
        self.keep_alive = self._parser.should_keep_alive()
        # Neither a length nor chunks: the body ends when the server closes the connection.
        names = {k for k, _ in self.headers}
        self._until_eof = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and self.status >= 200
            and self.status not in (204, 304)
        )
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def on_message_complete(self) -> None:
        self.complete = True

    # -- used by the pool and the response ---------------------------------------------------

    @property
    def reusable(self) -> bool:
        """Whether the last response ended cleanly on a connection that stays open."""
        return (
            self.complete
            and self.lost is None
            and self.transport is not None
            and not self.transport.is_closing()
            and self.keep_alive
        )

    def reset(self) -> None:
        """Ready for the next request on this connection."""
        self._parser = httptools.HttpResponseParser(self)
        self._chunks.clear()
        self._buffered = 0
        self.headers = []
        self.status = 0
        self.headers_done = self.complete = self.keep_alive = self._until_eof = False

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def write(self, data: bytes, limit_s: float) -> None:
        """Send ``data``; waits (bounded) only when the socket's buffer is full."""
        if self.transport is None or self.transport.is_closing():
            raise httpx.RemoteProtocolError("server disconnected before the request was sent")
        self.transport.write(data)
        drain = self._drain
        if drain is not None:
            try:
                async with asyncio.timeout(limit_s):
                    await asyncio.shield(drain)
            except TimeoutError:
                self.close()
                raise httpx.WriteTimeout(f"request not sent within {limit_s:g} s") from None

    async def wait(self, limit_s: float) -> None:
        """Wait (at most ``limit_s``) for the parser to make progress or the socket to end."""
        if self._chunks or self.complete:
            return  # progress made while the reader was busy elsewhere: no wait
        if self.lost is not None:
            raise self.lost
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._waiter = waiter
        # One timer per wait, not asyncio.wait_for (a task and more callbacks per read).
        timer = self._loop.call_later(limit_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if waiter.result() is _TIMEOUT:
            self.close()
            raise httpx.ReadTimeout(f"no data from the server within {limit_s:g} s")
        if self.lost is not None and not self.complete:
            raise self.lost

    def take(self) -> bytes:
        """The body bytes received so far (and resume reading if it was paused)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data


_TIMEOUT = object()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMEOUT)
