"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.

coe-router's one error tree (:mod:`coe_router.errors`) is kept; on the Messages routes a
:class:`~coe_router.errors.CoEError` is rendered with the Anthropic error type that its
HTTP status stands for, and the same status. The official ``anthropic`` client picks its
exception class from the status, and reads the type and message from the body.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from coe_router.errors import CoEError

AnthropicErrorType: TypeAlias = Literal[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
]

#: HTTP status -> Anthropic error type; other 4xx are invalid requests, other 5xx api errors.
_BY_STATUS: dict[int, AnthropicErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    # No live replica, an expert still loading, the state store down: try again later.
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> AnthropicErrorType:
    """The Anthropic error type for an HTTP status."""
    known = _BY_STATUS.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """``{"type": "error", "error": {"type": ..., "message": ...}}`` for ``status``."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def anthropic_error(exc: CoEError) -> dict[str, Any]:
    """The Anthropic error body for one of coe-router's errors (sent with its status)."""
    return error_body(exc.status_code, exc.message)
