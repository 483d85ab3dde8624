"""What every HTTP request goes through before a route: an id, a path check, the
concurrency limit, the body deadline, and the graceful drain.

A pure ASGI middleware (no per-request task, no body buffering):

* ``x-request-id`` on every response; the id is also in the log lines and upstream error
  bodies of the request (:mod:`coe_router.request_id`);
* a path that is not valid Unicode (a lone surrogate) is a 400, before any route sees it;
* at most ``COE_SERVER__MAX_CONCURRENCY`` requests on ``/v1/*`` at once; more get a 503
  with ``retry-after`` (probes are never refused: a full gateway is still alive);
* a request body must arrive within ``COE_SERVER__BODY_TIMEOUT_S`` of its headers, else
  the route reading it gets :class:`~coe_router.gateway.body.RequestTimeout` (a 408);
* requests still running when the drain time is up (:mod:`coe_router.gateway.drain`) are
  cancelled and ended here: an in-band error event and ``[DONE]`` for a stream, a JSON 503
  for an answer that has not started.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe_router.config import ServerSettings
from coe_router.errors import error_body
from coe_router.gateway.body import RequestTimeout
from coe_router.gateway.drain import Drain, InFlight
from coe_router.request_id import REQUEST_ID, new_request_id
from coe_router.sse import DONE, sse_event

#: Requests under this prefix count against the concurrency limit.
_LIMITED_PREFIX = "/v1/"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _send_json(
    send: Send, status: int, body: dict[str, object], headers: list[tuple[bytes, bytes]]
) -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
            *headers]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class Admission:
    """The middleware (see the module docstring); :attr:`in_flight` counts ``/v1/*``."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, drain: Drain) -> None:
        self.app = app
        self._settings = settings
        self._drain = drain
        #: Requests on ``/v1/*`` being served.
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        # Not reset afterwards: each request runs in its own task (its own context), and the
        # 500 handler, which runs outside this middleware, still wants it.
        REQUEST_ID.set(rid)
        id_header = (b"x-request-id", rid.encode())
        path: str = scope["path"]
        if not path.isascii() and not _valid_unicode(path):
            body = error_body("The request path is not valid Unicode.", "invalid_request_error",
                              None, "invalid_path")  # fmt: skip
            await _send_json(send, 400, body, [id_header])
            return
        limited = path.startswith(_LIMITED_PREFIX)
        if limited and self.in_flight >= self._settings.max_concurrency:
            body = error_body(
                "The gateway is serving as many requests as it may; retry shortly.",
                "service_unavailable", None, "overloaded",
            )  # fmt: skip
            await _send_json(send, 503, body, [(b"retry-after", b"1"), id_header])
            return
        task = asyncio.current_task()
        assert task is not None
        flight = InFlight(task)
        timer = None
        if scope.get("method") in _BODY_METHODS:
            # One timer per request (not one timeout per receive): the hot path stays cheap.
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self._settings.body_timeout_s, _body_overdue, flight)
            receive = self._bounded(receive, flight, timer)
        self.in_flight += limited
        self._drain.active.add(flight)
        try:
            await self._serve(scope, receive, send, flight, id_header)
        finally:
            self.in_flight -= limited
            self._drain.active.discard(flight)
            if timer is not None:
                timer.cancel()

    def _bounded(self, receive: Receive, flight: InFlight, timer: asyncio.TimerHandle) -> Receive:
        """``receive`` that raises :class:`RequestTimeout` once the body is overdue."""

        async def bounded() -> Message:
            if flight.body_done:
                return await receive()
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not flight.body_overdue:
                    raise
                flight.task.uncancel()
                raise self._timeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                flight.body_done = True
                timer.cancel()
            return message

        return bounded

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(
            f"The request body did not arrive within {self._settings.body_timeout_s:g} s.",
            code="request_timeout",
        )

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        flight: InFlight,
        id_header: tuple[bytes, bytes],
    ) -> None:
        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), id_header]
                message = {**message, "headers": headers}
                flight.headers = headers
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    flight.at_boundary = chunk.endswith(b"\n\n")
                flight.complete = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if flight.expired:
                flight.task.uncancel()
                await self._cut_short(flight, send, id_header)
            elif flight.body_overdue and not flight.body_done:
                # Overdue while the route was busy elsewhere than reading (rare): same answer.
                flight.task.uncancel()
                if flight.headers is None:
                    body = self._timeout().to_body()
                    await _send_json(send, 408, body, [(b"connection", b"close"), id_header])
            else:
                raise

    async def _cut_short(
        self, flight: InFlight, send: Send, id_header: tuple[bytes, bytes]
    ) -> None:
        """End a request the drain deadline cancelled, in a way its client understands."""
        if flight.complete:
            return
        body = error_body(
            "The gateway is shutting down; retry the request.", "service_unavailable",
            None, "shutting_down",
        )  # fmt: skip
        if flight.headers is None:
            headers = [(b"retry-after", b"1"), (b"connection", b"close"), id_header]
            await _send_json(send, 503, body, headers)
            return
        sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                  for k, v in flight.headers)  # fmt: skip
        tail = b""
        if sse:
            # A half-written event would swallow ours: finish it first.
            tail = (b"" if flight.at_boundary else b"\n\n") + sse_event(body) + DONE
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def _body_overdue(flight: InFlight) -> None:
    """The body deadline passed: stop the request (its route answers 408)."""
    if not flight.body_done and not flight.complete:
        flight.body_overdue = True
        flight.task.cancel()


def _valid_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
