"""Bad input from a client gets a 400 in OpenAI's shape, never a 500 (row 1 and 2 of the
fault table): lone surrogates anywhere in the body or the path, loosely typed fields,
too many choices. Against the real gateway process."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.faults.canned import StartGateway, log_of
from tests.support import GatewayProcess

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(module_gateway: StartGateway) -> GatewayProcess:
    return module_gateway()


def openai_error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["x-request-id"]
    error = resp.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    return dict(error)


@pytest.mark.parametrize(
    "raw",
    [
        # JSON escapes of a lone surrogate, where the gateway reads and where it only forwards.
        b'{"model": "coe", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        b'{"model": "coe\\udfff", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "coe", "messages": [{"role": "user", "content": "hi"}], '
        b'"coe": {"conversation_id": "\\uD800"}}',
        b'{"model": "coe", "messages": [{"role": "user", "content": "hi"}], "x\\ud800": 1}',
        b'{"model": "coe", "messages": [{"role": "user", "content": "hi"}], '
        b'"tools": [{"f": ["\\ude00"]}]}',
        # The surrogate's UTF-8-style bytes: not valid UTF-8.
        b'{"model": "coe", "messages": [{"role": "user", "content": "a\xed\xa0\x80b"}]}',
    ],
    ids=["content", "model", "conversation-id", "key", "nested-extra", "raw-bytes"],
)
def test_a_lone_surrogate_in_the_body_is_a_400(gw: GatewayProcess, raw: bytes) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for path in (CHAT, "/v1/route"):
            resp = client.post(path, content=raw, headers={"content-type": "application/json"})
            error = openai_error(resp, 400)
            assert error["type"] == "invalid_request_error"
            assert error["code"] == "invalid_json"
        # The Messages API says the same in Anthropic's shape.
        resp = client.post(
            "/v1/messages", content=raw.replace(b'"model"', b'"max_tokens": 8, "model"')
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["type"] == "error"
        assert resp.json()["error"]["type"] == "invalid_request_error"
        # A valid surrogate pair (an emoji) is fine, escaped or not.
        ok = client.post(CHAT, json={"model": "coe", "messages": [
            {"role": "user", "content": "\U0001f600"}]})  # fmt: skip
        assert ok.status_code == 200, ok.text
        pair = b'{"model": "coe", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
        assert client.post(CHAT, content=pair).status_code == 200
    assert "Traceback" not in log_of(gw)


def raw_request(gw: GatewayProcess, target: bytes) -> bytes:
    """``GET target`` over a raw socket (bytes as given); the response head and body."""
    url = httpx.URL(gw.url)
    assert url.port is not None
    with socket.create_connection((url.host, url.port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "target", [b"/v1/%ED%A0%80", b"/%ed%a0%80x", b"/v1/models/\xed\xa0\x80", b"/\xff"]
)
def test_a_bad_path_is_a_4xx_never_a_500(gw: GatewayProcess, target: bytes) -> None:
    response = raw_request(gw, target)
    status = int(response.split(b" ", 2)[1])
    assert 400 <= status < 500, response[:200]
    head, _, body = response.partition(b"\r\n\r\n")
    if b"application/json" in head:
        assert list(json.loads(body)["error"]) == ["message", "type", "param", "code"]
    assert "Traceback" not in log_of(gw)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"n": "2"}, "n"),
        ({"n": 17}, "n"),
        ({"n": 0}, "n"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"temperature": "0.5"}, "temperature"),
        ({"stream_options": {"include_usage": "true"}}, "stream_options.include_usage"),
        ({"coe": {"synthesis": "true"}}, "coe.synthesis"),
        ({"coe": {"k": 2.0}}, "coe.k"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_loosely_typed_fields_are_a_400_not_forwarded(
    gw: GatewayProcess, extra: dict[str, object], param: str
) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        resp = client.post(CHAT, json={"model": "coe", "messages": MESSAGES, **extra})
    error = openai_error(resp, 400)
    assert error["param"] == param


def test_n_up_to_the_limit_is_served(start_gateway: StartGateway) -> None:
    gw = start_gateway(env={"COE_SERVER__MAX_N": "3"})
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        ok = client.post(CHAT, json={"model": "coe", "messages": MESSAGES, "n": 3})
        assert ok.status_code == 200, ok.text
        error = openai_error(
            client.post(CHAT, json={"model": "coe", "messages": MESSAGES, "n": 4}), 400
        )
        assert error["param"] == "n"
        assert "at most 3" in str(error["message"])
