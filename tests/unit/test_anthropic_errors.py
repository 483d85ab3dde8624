"""coe-router's errors in Anthropic's shape, as the official client reads them."""

from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

from coe_router.anthropic.errors import anthropic_error, error_type
from coe_router.errors import (
    AuthenticationError,
    BodyTooLarge,
    CoEError,
    ExpertStarting,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    UpstreamBadResponse,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "kind", "client_error"),
    [
        (InvalidRequest("bad field"), "invalid_request_error", anthropic.BadRequestError),
        (BodyTooLarge("too big"), "invalid_request_error", anthropic.APIStatusError),
        (AuthenticationError("no key"), "authentication_error", anthropic.AuthenticationError),
        (PermissionDenied("admin only"), "permission_error", anthropic.PermissionDeniedError),
        (ModelNotFound("no such model"), "not_found_error", anthropic.NotFoundError),
        (RateLimited("slow down"), "rate_limit_error", anthropic.RateLimitError),
        (UpstreamBadResponse("garbage"), "api_error", anthropic.InternalServerError),
        (UpstreamUnavailable("no replica"), "overloaded_error", anthropic.InternalServerError),
        (ExpertStarting("loading"), "overloaded_error", anthropic.InternalServerError),
        (UpstreamTimeout("slow expert"), "timeout_error", anthropic.InternalServerError),
        (UpstreamStatusError(400, {"error": {"message": "max_tokens too large"}}),
         "invalid_request_error", anthropic.BadRequestError),
        (CoEError("bug"), "api_error", anthropic.InternalServerError),
    ],
)  # fmt: skip
async def test_errors_reach_the_client_as_anthropic_errors(
    error: CoEError, kind: str, client_error: type[anthropic.APIStatusError]
) -> None:
    body = anthropic_error(error)
    assert body == {"type": "error", "error": {"type": kind, "message": error.message}}

    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(error.status_code, json=body)

    client = anthropic.AsyncAnthropic(
        api_key="k", base_url="http://gateway", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handle)),
    )  # fmt: skip
    with pytest.raises(client_error) as info:
        await client.messages.create(
            model="coe", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == error.status_code
    assert info.value.body == body
    # The body parses as the client's own error type.
    anthropic.types.ErrorResponse.model_validate(json.loads(json.dumps(body)))


@pytest.mark.parametrize(
    ("status", "kind"),
    [(418, "invalid_request_error"), (422, "invalid_request_error"), (402, "billing_error"),
     (500, "api_error"), (502, "api_error"), (529, "overloaded_error")],
)  # fmt: skip
def test_other_statuses_fall_into_their_class(status: int, kind: str) -> None:
    assert error_type(status) == kind
