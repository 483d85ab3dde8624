"""Exception handlers: every failure leaves as one error body, in the dialect of its route.

Routes under ``/v1/messages`` speak Anthropic's API, so their errors (validation, auth,
limits, experts, unknown sub-routes, bugs) take Anthropic's shape
(:func:`coe_router.anthropic.errors.error_body`); every other route gets OpenAI's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coe_router.anthropic import errors as anthropic_errors
from coe_router.errors import CoEError, ExpertStarting, RateLimited, StateUnavailable, error_body

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
    headers = {"retry-after": "5"} if isinstance(exc, ExpertStarting) else None
    return _json(request, exc.to_body(), exc.status_code, exc.message, headers)


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
    message = (
        f"Unknown route: {request.method} {request.url.path}"
        if exc.status_code == 404
        else str(exc.detail)
    )
    return _json(
        request,
        error_body(message, "invalid_request_error", None, codes.get(exc.status_code)),
        exc.status_code,
        message,
        getattr(exc, "headers", None),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    message = "Internal error in the gateway; see its logs."
    return _json(request, error_body(message, "internal_error", None, None), 500, message)


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
    # Their headers (retry-after, x-ratelimit-*) matter to clients: more specific handlers.
    app.add_exception_handler(RateLimited, error_with_headers)
    app.add_exception_handler(StateUnavailable, error_with_headers)
