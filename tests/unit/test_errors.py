"""Every way a request can be wrong ends in one OpenAI-style error body, never a 500.

Also the error tree itself: each class's status and body, and the one place that
translates httpx failures and upstream statuses into it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coe_router.errors import (
    AuthenticationError,
    BodyTooLarge,
    CoEError,
    ConfigError,
    ExpertStarting,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamSaturated,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
    map_httpx_exceptions,
)
from coe_router.experts.replica import parse_completion, status_error
from tests.fakes import FakeVLLM
from tests.unit.conftest import openai_error

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "coe", "messages": MESSAGES, **fields}


# --- bodies that are not a JSON object ---------------------------------------------------------


def cases(hint: str, **bodies: bytes) -> list[Any]:
    """One case per body (its id the keyword), all expecting ``hint`` in the message."""
    return [pytest.param(body, hint, id=name) for name, body in bodies.items()]


NOT_AN_OBJECT = [
    *cases(
        "not valid JSON",
        truncated=b'{"model": "coe", "messages": [',
        single_quotes=b"{'model': 'coe'}",
        not_utf8=b'{"model": "\xff\xfe"}',
    ),
    # Valid JSON of another type: the message names the type the client sent.
    *cases("must be a JSON object, not list", array=b"[1, 2, 3]"),
    *cases("must be a JSON object, not str", string=b'"just a string"'),
    *cases("must be a JSON object, not NoneType", null=b"null"),
    *cases("must be a JSON object, not int", number=b"42"),
    *cases("empty", empty=b"", whitespace=b"  \n\t "),
    # Python's json reads these, JSON does not have them.
    *(pytest.param(b'{"model": "coe", "x": %s}' % w.encode(), w, id=w)
      for w in ("NaN", "Infinity", "-Infinity")),
    *cases("out of range", overflow=b'{"model": "coe", "temperature": 1e400}'),
    *cases("deeply", deep=b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "hint"), NOT_AN_OBJECT)
async def test_body_that_is_not_a_json_object_is_a_400(
    client: httpx.AsyncClient, fake: FakeVLLM, raw: bytes, hint: str
) -> None:
    for path in (CHAT, "/v1/route"):
        resp = await client.post(path, content=raw, headers={"content-type": "application/json"})
        error = openai_error(resp, 400)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_json"
        assert error["param"] is None
        assert hint in error["message"]
    assert fake.received == []


async def test_a_finite_float_is_still_accepted(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    # The overflow check must not reject ordinary floats.
    raw = b'{"model": "coe", "messages": [{"role": "user", "content": "hi"}], "top_p": 1e-3}'
    resp = await client.post(CHAT, content=raw)
    assert resp.status_code == 200, resp.text
    assert fake.received[-1].body["top_p"] == 0.001


# --- bodies with wrong fields ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "hint"),
    [
        pytest.param(chat(temperature="hot"), "temperature", "number", id="temperature-str"),
        pytest.param(chat(temperature=-1), "temperature", "greater than", id="temperature-neg"),
        pytest.param(chat(max_tokens=0), "max_tokens", "greater than", id="max-tokens-0"),
        pytest.param(chat(n="many"), "n", "integer", id="n-str"),
        pytest.param(chat(stream="maybe"), "stream", "boolean", id="stream-str"),
        pytest.param(chat(stop=5), "stop", "", id="stop-int"),
        pytest.param(chat(coe="note"), "coe", "dictionary", id="coe-not-object"),
        pytest.param(chat(model=5), "model", "string", id="model-int"),
        pytest.param({"model": "coe", "messages": "hello"}, "messages", "list", id="messages-str"),
        pytest.param(
            {"model": "coe", "messages": {"role": "user"}}, "messages", "list", id="messages-obj"
        ),
        pytest.param(
            {"model": "coe", "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
            "'user'",
            id="role-robot",
        ),
        pytest.param(
            {"model": "coe", "messages": [{"content": "hi"}]},
            "messages.0.role",
            "Missing required parameter",
            id="role-missing",
        ),
        pytest.param(
            {"model": "coe", "messages": [{"role": "user", "content": "a"}, "b"]},
            "messages.1",
            "",
            id="message-not-object",
        ),
        # Pydantic reports union members (content.str, content.list[...]); the param names
        # the field the client sent, not the member.
        pytest.param(
            {"model": "coe", "messages": [{"role": "user", "content": [1]}]},
            "messages.0.content",
            "",
            id="content-list-of-int",
        ),
        pytest.param(
            {"model": "coe", "messages": [{"role": "user", "content": {"a": 1}}]},
            "messages.0.content",
            "",
            id="content-object",
        ),
        pytest.param(
            {"model": "coe", "messages": []}, "messages", "at least one message", id="empty"
        ),
        pytest.param(
            {"messages": MESSAGES}, "model", "Missing required parameter: 'model'", id="no-model"
        ),
        pytest.param(
            {"model": "coe"}, "messages", "Missing required parameter: 'messages'", id="no-msgs"
        ),
    ],
)
async def test_invalid_field_is_a_400_naming_the_field(
    client: httpx.AsyncClient, fake: FakeVLLM, body: dict[str, Any], param: str, hint: str
) -> None:
    resp = await client.post(CHAT, json=body)
    error = openai_error(resp, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_value"
    assert error["param"] == param
    assert hint in error["message"]
    assert fake.received == []


async def test_several_problems_report_the_first_and_count_the_rest(
    client: httpx.AsyncClient,
) -> None:
    body = chat(temperature="hot", max_tokens=0, n=0)
    error = openai_error(await client.post(CHAT, json=body), 400)
    assert error["param"] in {"temperature", "max_tokens", "n"}
    assert "(2 more problems)" in error["message"]


async def test_route_validates_like_chat(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "robot", "content": "hi"}]}
    error = openai_error(await client.post("/v1/route", json=body), 400)
    assert error["param"] == "messages.0.role"
    error = openai_error(await client.post("/v1/route", json={"messages": []}), 400)
    assert error["param"] == "messages"


# --- size limit --------------------------------------------------------------------------------

LIMIT = 1024


def body_of_size(size: int) -> bytes:
    """A valid chat body of exactly ``size`` bytes (the padding is a forwarded extra field)."""
    empty = json.dumps(chat(pad=""), separators=(",", ":")).encode()
    raw = json.dumps(chat(pad="x" * (size - len(empty))), separators=(",", ":")).encode()
    assert len(raw) == size
    return raw


async def test_body_at_the_limit_is_accepted(make_client: Callable[..., Any]) -> None:
    client = await make_client(server={"max_body_bytes": LIMIT})
    resp = await client.post(CHAT, content=body_of_size(LIMIT))
    assert resp.status_code == 200, resp.text


async def test_body_over_the_limit_with_content_length_is_a_413(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(server={"max_body_bytes": LIMIT})
    raw = body_of_size(LIMIT + 1)
    resp = await client.post(CHAT, content=raw)
    assert resp.request.headers["content-length"] == str(LIMIT + 1)
    error = openai_error(resp, 413)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_too_large"
    assert str(LIMIT) in error["message"]
    assert fake.received == []


async def test_chunked_body_over_the_limit_is_a_413_without_reading_it_all(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(server={"max_body_bytes": LIMIT})
    produced = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(100):
            produced += 1
            yield b" " * 600

    resp = await client.post(CHAT, content=chunks())
    assert "content-length" not in resp.request.headers
    error = openai_error(resp, 413)
    assert error["code"] == "request_too_large"
    assert produced < 5  # the gateway stopped reading once past the limit
    assert fake.received == []


async def test_small_chunked_body_is_accepted(make_client: Callable[..., Any]) -> None:
    client = await make_client(server={"max_body_bytes": LIMIT})
    raw = json.dumps(chat()).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    resp = await client.post(CHAT, content=chunks())
    assert resp.status_code == 200, resp.text


# --- models, routes, methods -------------------------------------------------------------------


async def test_unknown_model_is_a_404_naming_the_available_ones(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    resp = await client.post(CHAT, json=chat(model="gpt-9"))
    error = openai_error(resp, 404)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "gpt-9" in error["message"]
    for known in ("coe", "general", "code"):
        assert known in error["message"]
    assert fake.received == []


async def test_unknown_model_on_route_is_a_404(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/route", json=chat(model="gpt-9"))
    assert openai_error(resp, 404)["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("POST", "/v2/chat/completions"), ("GET", "/v1/models/coe/extra")],
)
async def test_unknown_route_is_a_404_in_openai_shape(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    error = openai_error(await client.request(method, path), 404)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "not_found"
    assert path in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", "/v1/route", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/health", "GET"),
    ],
)
async def test_wrong_method_is_a_405_in_openai_shape(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    resp = await client.request(method, path)
    error = openai_error(resp, 405)
    assert error["code"] == "method_not_allowed"
    assert allow in resp.headers["allow"]


# --- never a 500 -------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]) | _json,
        "content": st.text(max_size=20) | _json,
        "name": _json,
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["coe", "code", "small-coder", "nope"]) | _json,
        "messages": st.lists(_message, max_size=3) | _json,
        "temperature": _json,
        "max_tokens": _json,
        "stream": st.booleans() | _json,
        "stop": _json,
        "coe": _json,
        "stream_options": _json,
    },
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=_body | _json)
async def test_arbitrary_json_never_gives_a_500(client: httpx.AsyncClient, body: Any) -> None:
    # The fixture's ASGITransport re-raises any exception the app did not handle, so an
    # unexpected error fails here even before the status check.
    for path in (CHAT, "/v1/route"):
        resp = await client.post(path, json=body)
        assert resp.status_code in (200, 400, 404), resp.text
        if resp.status_code != 200:
            openai_error(resp, resp.status_code)


# --- the error tree ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        (CoEError("x"), 500, "internal_error", None),
        (InvalidRequest("x"), 400, "invalid_request_error", None),
        (BodyTooLarge("x"), 413, "invalid_request_error", "request_too_large"),
        (AuthenticationError("x"), 401, "authentication_error", "invalid_api_key"),
        (PermissionDenied("x"), 403, "permission_error", "insufficient_permissions"),
        (ModelNotFound("x"), 404, "invalid_request_error", "model_not_found"),
        (UpstreamError("x"), 502, "upstream_error", "upstream_error"),
        (UpstreamBadResponse("x"), 502, "upstream_error", "upstream_bad_response"),
        (UpstreamUnavailable("x"), 503, "upstream_error", "expert_unavailable"),
        (ExpertStarting("x"), 503, "upstream_error", "expert_starting"),
        (UpstreamTimeout("x"), 504, "upstream_error", "upstream_timeout"),
        (ConfigError("x"), 500, "config_error", None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_each_error_has_its_status_and_openai_body(
    exc: CoEError, status: int, type_: str, code: str | None
) -> None:
    assert exc.status_code == status
    # Upstream errors tell the client a stable text; their message (URLs, the expert's own
    # words) is only logged.
    message = exc.client_text or "x"
    assert exc.to_body() == {"error": {"message": message, "type": type_, "param": None,
                                       "code": code}}  # fmt: skip
    assert list(exc.to_body()["error"]) == ["message", "type", "param", "code"]


def test_param_code_and_status_can_be_given() -> None:
    exc = InvalidRequest("bad", param="messages.0", code="invalid_value", status_code=422)
    assert exc.status_code == 422
    assert exc.to_body()["error"] == {
        "message": "bad", "type": "invalid_request_error", "param": "messages.0",
        "code": "invalid_value",
    }  # fmt: skip
    # The class default is untouched by one instance's override.
    assert InvalidRequest("x").status_code == 400


def test_upstream_status_error_passes_openai_shape_on() -> None:
    body = {"error": {"message": "max_tokens too large", "type": "BadRequestError",
                      "param": "max_tokens", "code": 400}}  # fmt: skip
    exc = UpstreamStatusError(400, body)
    assert exc.status_code == 400
    assert not exc.retryable
    assert exc.to_body()["error"] == {
        "message": "max_tokens too large", "type": "BadRequestError", "param": "max_tokens",
        "code": "400",
    }  # fmt: skip


def test_upstream_status_error_reads_vllm_flat_shape() -> None:
    body = {"object": "error", "message": "model does not exist", "type": "NotFoundError",
            "param": None, "code": 404}  # fmt: skip
    exc = UpstreamStatusError(404, body)
    assert exc.status_code == 404
    assert exc.to_body()["error"] == {
        "message": "model does not exist", "type": "NotFoundError", "param": None, "code": "404",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [({}, "expert returned 422"), ({"error": "nope"}, "nope"), ({"detail": [1]}, "expert")],
)
def test_upstream_status_error_survives_odd_bodies(body: dict[str, Any], message: str) -> None:
    error = UpstreamStatusError(422, body).to_body()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "upstream_error"  # the class default when the expert gave none


@pytest.mark.parametrize(
    ("raised", "expected", "status"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable, 503),
        (httpx.RemoteProtocolError("peer closed"), UpstreamUnavailable, 503),
        (httpx.ReadError("reset"), UpstreamUnavailable, 503),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, 504),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504),
        (httpx.PoolTimeout("busy"), UpstreamSaturated, 503),
        (httpx.DecodingError("bad gzip"), UpstreamBadResponse, 502),
        (httpx.StreamClosed(), UpstreamError, 502),
        (httpx.TooManyRedirects("loop"), UpstreamError, 502),
    ],
)
def test_httpx_failures_become_retryable_upstream_errors(
    raised: Exception, expected: type[UpstreamError], status: int
) -> None:
    with pytest.raises(expected) as info, map_httpx_exceptions("expert 'code' at http://x"):
        raise raised
    assert type(info.value) is expected
    assert info.value.status_code == status
    assert info.value.retryable
    assert "expert 'code' at http://x" in info.value.message
    assert info.value.__cause__ is raised


@pytest.mark.parametrize(
    ("raised", "verdict", "resend_non_streamed"),
    [
        (httpx.ConnectError("refused"), "down", True),
        (httpx.ConnectTimeout("slow"), "failed", True),
        (httpx.RemoteProtocolError("peer closed"), "failed", True),
        (httpx.DecodingError("bad gzip"), "failed", True),
        # The replica has the request and is generating: not its fault, not sent twice.
        (httpx.ReadTimeout("slow"), "slow", False),
        # Our own pool is full: not the replica's fault; another replica has its own pool.
        (httpx.PoolTimeout("busy"), "busy", True),
    ],
)
def test_httpx_failures_are_classified(
    raised: Exception, verdict: str, resend_non_streamed: bool
) -> None:
    with pytest.raises(UpstreamError) as info, map_httpx_exceptions("x"):
        raise raised
    assert info.value.verdict == verdict
    assert info.value.replica_fault is (verdict in ("down", "failed"))
    assert info.value.retry_elsewhere(streaming=False) is resend_non_streamed
    assert info.value.retry_elsewhere(streaming=True)


def test_non_httpx_errors_pass_through_untranslated() -> None:
    with pytest.raises(KeyError), map_httpx_exceptions("x"):
        raise KeyError("bug")


def _response(status: int, body: Any = None, content: bytes | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    if content is not None:
        return httpx.Response(status, content=content, request=request)
    return httpx.Response(status, json=body, request=request)


@pytest.mark.parametrize(
    ("status", "expected", "client_status", "retryable"),
    [
        (400, UpstreamStatusError, 400, False),
        (404, UpstreamStatusError, 404, False),
        (422, UpstreamStatusError, 422, False),
        (408, UpstreamError, 502, True),  # a timeout: another replica may do better
        (429, UpstreamError, 503, True),  # overloaded, not broken
        (500, UpstreamError, 502, True),
        (503, UpstreamError, 503, True),
    ],
)
def test_upstream_status_is_translated(
    status: int, expected: type[UpstreamError], client_status: int, retryable: bool
) -> None:
    exc = status_error(_response(status, {"error": {"message": "boom"}}), "expert 'x'")
    assert type(exc) is expected
    assert exc.status_code == client_status
    assert exc.retryable is retryable
    assert "boom" in exc.message
    # An overloaded replica is alive: it must not be marked down like a refused one.
    assert not isinstance(exc, UpstreamUnavailable)


def test_parse_completion_accepts_a_chat_completion() -> None:
    body = {"id": "x", "choices": []}
    assert parse_completion(_response(200, body), "e") == body


@pytest.mark.parametrize(
    "resp",
    [
        _response(200, content=b"<html>"),
        _response(200, [1, 2]),
        _response(200, {"choices": "no"}),
        _response(200, {"hello": "world"}),
    ],
    ids=["not-json", "array", "choices-not-list", "no-choices"],
)
def test_parse_completion_rejects_what_is_not_a_chat_completion(resp: httpx.Response) -> None:
    with pytest.raises(UpstreamBadResponse) as info:
        parse_completion(resp, "expert 'e'")
    assert info.value.status_code == 502
    assert info.value.retryable
