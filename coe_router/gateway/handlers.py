"""Exception handlers: every failure leaves as one OpenAI-style error body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coe_router.errors import CoEError, ExpertStarting, RateLimited, StateUnavailable, error_body

log = logging.getLogger("coe_router.gateway")


async def _coe_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoEError)
    headers = {"retry-after": "5"} if isinstance(exc, ExpertStarting) else None
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in err["loc"][1:]) or None
    return JSONResponse(
        error_body(f"Invalid request: {err['msg']}", "invalid_request_error", param,
                   "invalid_value"),
        status_code=400,
    )  # fmt: skip


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = (
        f"Unknown route: {request.method} {request.url.path}"
        if exc.status_code == 404
        else str(exc.detail)
    )
    return JSONResponse(
        error_body(message, "invalid_request_error", None, codes.get(exc.status_code)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("Internal error in the gateway; see its logs.", "internal_error", None, None),
        status_code=500,
    )


async def error_with_headers(request: Request, exc: Exception) -> JSONResponse:
    """Handler for :class:`RateLimited` and :class:`StateUnavailable`: the OpenAI body plus
    the error's own headers (``retry-after``, ``x-ratelimit-*``)."""
    assert isinstance(exc, RateLimited | StateUnavailable)
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(CoEError, _coe_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    # Their headers (retry-after, x-ratelimit-*) matter to clients: more specific handlers.
    app.add_exception_handler(RateLimited, error_with_headers)
    app.add_exception_handler(StateUnavailable, error_with_headers)
