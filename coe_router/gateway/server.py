"""Running the gateway under uvicorn: a request-header deadline and a graceful drain.

uvicorn bounds the idle time between requests (keep-alive) but not the time a client
takes to send a request's headers: a client dripping one byte a second holds its
connection forever. :func:`header_deadline_protocol` adds that deadline to uvicorn's own
HTTP protocol class (whichever ``http="auto"`` picks): from the connection's start, or
from the first byte of each later request, the headers must be complete within
``COE_SERVER__HEADER_TIMEOUT_S``, else the client gets a 408 and the connection closes.
(The body has its own deadline: :mod:`coe_router.gateway.admission`.)

:class:`GatewayServer` starts the drain (:mod:`coe_router.gateway.drain`) when uvicorn
begins its shutdown, and waits for it: uvicorn's own grace period is the drain time plus
a margin, so requests are ended by the drain, never cut by uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from coe_router.errors import error_body
from coe_router.gateway.drain import Drain

#: Seconds uvicorn waits past the drain time before it cancels what is left (a backstop:
#: the drain has ended every request by then).
SHUTDOWN_MARGIN_S = 5


def _timeout_response() -> bytes:
    body = json.dumps(error_body(
        "The request headers did not arrive in time.", "invalid_request_error", None,
        "request_timeout",
    )).encode()  # fmt: skip
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_TIMEOUT_RESPONSE = _timeout_response()


def header_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with a deadline on each request's headers."""
    base: Any = AutoHTTPProtocol

    class HeaderDeadline(base):  # type: ignore[misc]
        """Arms a timer while a request's headers are awaited; a new cycle disarms it."""

        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            # Between requests (none yet, or the last one answered): this data starts one.
            waiting = cycle is None or cycle.response_complete
            super().data_received(data)
            if self.cycle is not cycle:  # the parser finished a request's headers
                self._disarm()
            elif waiting and self._header_timer is None:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._headers_overdue)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            self._header_timer = None
            cycle = self.cycle
            if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
                return  # a request is being served: not ours to stop
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    return HeaderDeadline


class GatewayServer(uvicorn.Server):
    """uvicorn's server, which drains in-flight requests before it stops (see above)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, drain, then let uvicorn finish (lifespan shutdown last)."""
        self._drain.begin()
        try:
            await super().shutdown(sockets)
        finally:
            self._drain.cancel()


def gateway_config(app: Any, *, host: str, port: int, log_level: str, access_log: bool,
                   header_timeout_s: float, drain_s: float) -> uvicorn.Config:  # fmt: skip
    """The uvicorn configuration the gateway runs with."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        http=header_deadline_protocol(header_timeout_s),
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 and rewrite the client
        # address; the gateway decides whom to believe (COE_SERVER__TRUSTED_PROXIES).
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(drain_s) + SHUTDOWN_MARGIN_S,
    )
