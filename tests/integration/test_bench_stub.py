"""The benchmark's stub upstream (``bench/stub_upstream.py``) speaks enough OpenAI.

Starts the stub as a subprocess on a free port (``tests.support.start_stub``, as the
benchmark does) and talks to it with httpx and with the official ``openai`` client. Takes
well under a second.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support import start_stub, stop_process

CHAT = {"model": "stub-coder", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def stub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running stub; stopped (terminate, then kill) after the module."""
    proc, url = start_stub(tmp_path_factory.mktemp("stub") / "stub.log")
    try:
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        stop_process(proc, 5)


@pytest.fixture
def client(stub_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stub_url, timeout=httpx.Timeout(5.0)) as c:
        yield c


def test_health(client: httpx.Client) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_completion_is_a_chat_completion_over_one_kept_alive_connection(
    client: httpx.Client,
) -> None:
    for _ in range(3):
        resp = client.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        assert int(resp.headers["content-length"]) == len(resp.content)
        body = resp.json()
        assert body["object"] == "chat.completion"
        assert body["model"] == "stub-coder"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["choices"][0]["message"]["content"]
        assert body["choices"][0]["finish_reason"] == "stop"


def test_framing_allows_keep_alive_across_json_and_streamed_answers(stub_url: str) -> None:
    url = httpx.URL(stub_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=5)
    try:
        sockets = []
        for stream in (False, True, False, True):
            conn.request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": stream}),
                         {"content-type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            body = resp.read()  # must end exactly where the framing says
            assert resp.status == 200
            assert body.endswith(b"data: [DONE]\n\n") if stream else json.loads(body)
            assert resp.getheader("connection") == "keep-alive"
            sockets.append(conn.sock)
        assert all(s is sockets[0] for s in sockets)  # one connection served all four
    finally:
        conn.close()


def test_openai_client_parses_the_completion(stub_url: str) -> None:
    with openai.OpenAI(base_url=stub_url + "/v1", api_key="unused", max_retries=0) as oai:
        completion = oai.chat.completions.create(
            model="stub-coder", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.object == "chat.completion"
    assert completion.model == "stub-coder"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


def test_stream_is_chunked_sse_ending_with_done(client: httpx.Client) -> None:
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=request) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    # The connection survives the stream: the next request on it still works.
    assert client.get("/health").status_code == 200


def test_openai_client_reads_the_stream(stub_url: str) -> None:
    with openai.OpenAI(base_url=stub_url + "/v1", api_key="unused", max_retries=0) as oai:
        stream = oai.chat.completions.create(
            model="stub-coder", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text


def test_errors_are_openai_shaped(client: httpx.Client) -> None:
    resp = client.post("/v1/chat/completions", content=b"{not json")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/nope").status_code == 404
    assert client.get("/v1/chat/completions").status_code == 405
