"""The request span at the HTTP edge: started before anything else, ended exactly once.

A route's work gets the span (children start under it) and returns its response with the
request's :class:`~coe_router.lifecycle.RequestLifecycle`, if it made one; a client that
hung up (:class:`~coe_router.lifecycle.ClientDisconnected`) gets nginx's 499 here. The lifecycle
then owns the span and ends it in ``finish``, which for a stream is when the stream ends;
without one (a cache hit, a rejected request) the span ends when the route returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from coe_router import tracing
from coe_router.lifecycle import CLIENT_CLOSED, ClientDisconnected, RequestLifecycle

Handler = Callable[[tracing.Span], Awaitable[tuple[Response, RequestLifecycle | None]]]


async def traced(api: str, request: Request, handle: Handler) -> Response:
    """Run ``handle`` under a new request span for ``api`` (continuing the client's trace)."""
    span = tracing.request_span(api, None, request.headers)
    try:
        with span.current():
            response, lifecycle = await handle(span)
    except ClientDisconnected:  # its lifecycle finished it (499) already
        span.end()
        return Response(status_code=int(CLIENT_CLOSED))
    except BaseException:
        span.end()
        raise
    if lifecycle is None:
        span.set("http.response.status_code", response.status_code)
        span.end()
    return response
