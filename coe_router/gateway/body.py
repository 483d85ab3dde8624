"""Reading and validating request bodies into OpenAI errors rather than 500s."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from coe_router import tracing
from coe_router.errors import BodyTooLarge, InvalidRequest

M = TypeVar("M", bound=BaseModel)

#: A ``\\uD800``-``\\uDFFF`` escape: JSON lets it decode to a lone surrogate, which no
#: encoder downstream accepts. Only a body that has one is scanned (a regex pass in C).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")


class RequestTimeout(InvalidRequest):
    """The client did not send its request body in time (``COE_SERVER__BODY_TIMEOUT_S``)."""

    status_code = 408
    default_code = "request_timeout"


def _lone_surrogate(body: Any) -> bool:
    """Whether a string anywhere in ``body`` holds a lone surrogate (not valid Unicode)."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # ``1e400`` parses to inf, which validation accepts and the expert then receives as the
    # non-JSON token ``Infinity``; reject it here like the NaN/Infinity constants.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is out of range")
    return value


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``limit`` bytes, 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"Request body is {declared} bytes; the limit is {limit} bytes.")
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequest("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        # Strict UTF-8 first: json.loads(bytes) would let encoded surrogates (ED A0 80) through.
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"Request body is not valid JSON: not UTF-8 at byte {exc.start}.", code="invalid_json"
        ) from None
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise InvalidRequest(
            f"Request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    except RecursionError:
        # A few KB of "[[[[..." exhaust the decoder's stack; that is the client's fault, not a 500.
        raise InvalidRequest("Request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"Request body must be a JSON object, not {type(body).__name__}.", code="invalid_json"
        )
    if _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(body):
        raise InvalidRequest(
            "Request body has a lone UTF-16 surrogate escape (such as \\ud800); "
            "strings must be valid Unicode.",
            code="invalid_json",
        )
    return body


async def read_request(
    request: Request, limit: int, model: type[M], context: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], M]:
    """The body (:func:`read_json`) and its validated form (:func:`validate`), under the
    request's validation span."""
    with tracing.validation_span():
        body = await read_json(request, limit)
        return body, validate(model, body, context)


def validate(model: type[M], body: dict[str, Any], context: Mapping[str, Any] | None = None) -> M:
    """``model.model_validate(body)`` (with ``context``, e.g. the request limits); the first
    problem becomes a 400 naming its field."""
    try:
        return model.model_validate(body, context=dict(context or {}))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in _field_loc(body, err["loc"], err["type"])) or None
        message = f"Invalid value for '{param}': {err['msg']}." if param else err["msg"]
        if err["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        elif param == "messages" and err["type"] == "too_short":
            message = "'messages' must contain at least one message."
        more = len(exc.errors()) - 1
        if more:
            message += f" ({more} more problem{'s' if more > 1 else ''})"
        raise InvalidRequest(message, param=param, code="invalid_value") from None


def _field_loc(body: Any, loc: tuple[int | str, ...], error_type: str) -> tuple[int | str, ...]:
    """``loc`` cut to the part that names fields of ``body``.

    Pydantic appends union members to the location (``messages.0.content.str``); those
    are not fields the client sent, so the path stops where the input stops. A missing
    field is the exception: its name is the point of the error.
    """
    node = body
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_dict or in_list):
            missing = error_type == "missing" and isinstance(node, dict)
            return loc[: i + 1] if missing and i == len(loc) - 1 else loc[:i]
        node = node[part]
    return loc
