"""Reading and validating request bodies into OpenAI errors rather than 500s."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from coe_router.errors import BodyTooLarge, InvalidRequest

M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"Request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"Request body must be a JSON object, not {type(body).__name__}.", code="invalid_json"
        )
    return body


def validate(model: type[M], body: dict[str, Any]) -> M:
    """``model.model_validate(body)``; the first problem becomes a 400 naming its field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        message = f"Invalid value for '{param}': {err['msg']}." if param else err["msg"]
        if err["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        elif param == "messages" and err["type"] == "too_short":
            message = "'messages' must contain at least one message."
        more = len(exc.errors()) - 1
        if more:
            message += f" ({more} more problem{'s' if more > 1 else ''})"
        raise InvalidRequest(message, param=param, code="invalid_value") from None
