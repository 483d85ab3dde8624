"""Exception handlers: every failure leaves as one OpenAI-style error body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from coe_router.errors import CoEError, ExpertStarting, RateLimited, StateUnavailable, error_body
from coe_router.gateway.body import RequestTimeout
from coe_router.lifecycle import CLIENT_CLOSED

log = logging.getLogger("coe_router.gateway")


async def _coe_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoEError)
    headers: dict[str, str] | None = None
    if isinstance(exc, ExpertStarting):
        headers = {"retry-after": "5"}
    elif isinstance(exc, RequestTimeout):
        headers = {"connection": "close"}  # the rest of a late body is not worth waiting for
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up while its body was read: nobody to answer, nothing to log loudly.
    log.debug("client closed %s %s before its body arrived", request.method, request.url.path)
    return Response(status_code=int(CLIENT_CLOSED))


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
    # The path is the client's text: escape what is not valid Unicode before echoing it.
    path = request.url.path.encode("utf-8", "backslashreplace").decode()
    message = (
        f"Unknown route: {request.method} {path}" if exc.status_code == 404 else str(exc.detail)
    )
    return JSONResponse(
        error_body(message, "invalid_request_error", None, codes.get(exc.status_code)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = str(getattr(request.state, "request_id", "-"))
    log.exception("request %s: unhandled error on %s %s", rid, request.method,
                  request.url.path.encode("utf-8", "backslashreplace").decode(),
                  exc_info=exc)  # fmt: skip
    return JSONResponse(
        error_body(f"Internal error in the gateway (request id {rid}).", "internal_error",
                   None, None),
        status_code=500,
        headers={"x-request-id": rid},
    )  # fmt: skip


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
    app.add_exception_handler(ClientDisconnect, _client_gone)
    # Their headers (retry-after, x-ratelimit-*) matter to clients: more specific handlers.
    app.add_exception_handler(RateLimited, error_with_headers)
    app.add_exception_handler(StateUnavailable, error_with_headers)
