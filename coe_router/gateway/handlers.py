"""Exception handlers: every failure leaves as one error body, in the dialect of its route.

Routes under ``/v1/messages`` speak Anthropic's API, so their errors (validation, auth,
limits, experts, unknown sub-routes, bugs) take Anthropic's shape
(:func:`coe_router.anthropic.errors.error_body`); every other route gets OpenAI's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from coe_router.anthropic import errors as anthropic_errors
from coe_router.errors import CoEError, ExpertStarting, RateLimited, StateUnavailable, error_body
from coe_router.gateway.body import RequestTimeout
from coe_router.lifecycle import CLIENT_CLOSED

log = logging.getLogger("coe_router.gateway")
#: Path prefix of the routes that answer errors in Anthropic's shape.
ANTHROPIC_PREFIX = "/v1/messages"


def _json(
    request: Request,
    body: dict[str, Any],
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """``body`` (OpenAI's shape), or Anthropic's for the Messages routes."""
    if request.url.path.startswith(ANTHROPIC_PREFIX):
        body = anthropic_errors.error_body(status, message)
    return JSONResponse(body, status_code=status, headers=headers)


async def _coe_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoEError)
    headers: dict[str, str] | None = None
    if isinstance(exc, ExpertStarting):
        headers = {"retry-after": "5"}
    elif isinstance(exc, RequestTimeout):
        headers = {"connection": "close"}  # the rest of a late body is not worth waiting for
    body = exc.to_body()  # the public message: upstream detail stays in the log
    return _json(request, body, exc.status_code, body["error"]["message"], headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up while its body was read: nobody to answer, nothing to log loudly.
    log.debug("client closed %s %s before its body arrived", request.method, request.url.path)
    return Response(status_code=int(CLIENT_CLOSED))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in err["loc"][1:]) or None
    message = f"Invalid request: {err['msg']}"
    return _json(
        request, error_body(message, "invalid_request_error", param, "invalid_value"), 400, message
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    # The path is the client's text: escape what is not valid Unicode before echoing it.
    path = request.url.path.encode("utf-8", "backslashreplace").decode()
    message = (
        f"Unknown route: {request.method} {path}" if exc.status_code == 404 else str(exc.detail)
    )
    return _json(
        request,
        error_body(message, "invalid_request_error", None, codes.get(exc.status_code)),
        exc.status_code,
        message,
        getattr(exc, "headers", None),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = str(getattr(request.state, "request_id", "-"))
    log.exception("request %s: unhandled error on %s %s", rid, request.method,
                  request.url.path.encode("utf-8", "backslashreplace").decode(),
                  exc_info=exc)  # fmt: skip
    message = f"Internal error in the gateway (request id {rid})."
    response = _json(request, error_body(message, "internal_error", None, None), 500, message)
    response.headers["x-request-id"] = rid
    return response


async def error_with_headers(request: Request, exc: Exception) -> JSONResponse:
    """Handler for :class:`RateLimited` and :class:`StateUnavailable`: the OpenAI body plus
    the error's own headers (``retry-after``, ``x-ratelimit-*``)."""
    assert isinstance(exc, RateLimited | StateUnavailable)
    return _json(request, exc.to_body(), exc.status_code, exc.message, exc.headers)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(CoEError, _coe_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    # Their headers (retry-after, x-ratelimit-*) matter to clients: more specific handlers.
    app.add_exception_handler(RateLimited, error_with_headers)
    app.add_exception_handler(StateUnavailable, error_with_headers)
