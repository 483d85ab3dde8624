"""What a client gets when an expert misbehaves: each fault of the fake upstream, through the
real gateway process. Requests name an expert, so cross-expert fallback stays out of it
(tests/faults/test_fallback_faults.py covers that)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.faults.upstreams import (
    CHAT,
    FakeUpstream,
    catalog,
    chat,
    cpu_seconds,
    error_of,
    gateway,
    running,
    sse,
)
from tests.support import GatewayProcess

READ_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def code_fake(fakes: Callable[[], FakeUpstream]) -> FakeUpstream:
    return fakes()


@pytest.fixture(scope="module")
def gw(
    fakes: Callable[[], FakeUpstream], code_fake: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:  # fmt: skip
    general = [fakes().url, fakes().url]
    env = {
        "COE_UPSTREAM__READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        # Faults back to back must not open the breaker here: each test sees its own fault.
        "COE_UPSTREAM__BREAKER_FAILURES": "1000",
    }
    with running(gateway(tmp_path_factory.mktemp("gw"), catalog(general, [code_fake.url]),
                         env)) as gw:  # fmt: skip
        yield gw


@pytest.fixture
def client(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        yield c


def test_an_endless_event_is_cut_at_the_cap_with_an_in_band_502(
    gw: GatewayProcess, client: httpx.Client, code_fake: FakeUpstream
) -> None:
    aborted = code_fake.count("aborted")
    cpu = cpu_seconds(gw.process.pid)
    started = time.monotonic()
    resp = client.post(CHAT, json=chat("fault:unbounded_event:20000000", "code", stream=True))
    elapsed = time.monotonic() - started
    events = sse(resp)
    error = events[-2]["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_bad_response")
    assert "request id" in error["message"]  # the detail is in the log, not for the client
    assert all("error" not in e for e in events[:-2])  # the role chunk went through whole
    # Bounded and linear: about 1 MiB read, not 20 MB scanned again for every chunk.
    assert elapsed < 5, elapsed
    assert cpu_seconds(gw.process.pid) - cpu < 1.5
    # The gateway hung up on the expert instead of reading the rest.
    deadline = time.monotonic() + 5
    while code_fake.count("aborted") == aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert code_fake.count("aborted") == aborted + 1
    assert client.get("/health").status_code == 200


def test_a_non_streamed_body_over_the_cap_is_a_502(client: httpx.Client) -> None:
    resp = client.post(CHAT, json=chat("fault:unbounded_event:20000000", "code"))
    assert error_of(resp, 502)["code"] == "upstream_bad_response"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", ["gzip_junk", "garbage"])
def test_a_body_that_does_not_decode_is_a_502(
    client: httpx.Client, code_fake: FakeUpstream, fault: str, stream: bool
) -> None:
    before = code_fake.count(fault)
    resp = client.post(CHAT, json=chat(f"fault:{fault}", "code", stream=stream))
    error = error_of(resp, 502)  # before the first byte: a plain JSON error
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_bad_response")
    assert code_fake.count(fault) == before + 1


def test_a_connection_closed_mid_stream_ends_in_band(client: httpx.Client) -> None:
    events = sse(client.post(CHAT, json=chat("fault:midstream_close", "code", stream=True)))
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["error"]["type"] == "upstream_error"
    assert all("error" not in e for e in events[:-2])  # the half event was dropped


def test_a_connection_closed_mid_body_is_an_error(client: httpx.Client) -> None:
    resp = client.post(CHAT, json=chat("fault:midstream_close", "code"))
    assert error_of(resp, 503)["type"] == "upstream_error"


@pytest.mark.parametrize("code", [500, 502, 503])
def test_an_upstream_5xx_is_an_upstream_error(client: httpx.Client, code: int) -> None:
    resp = client.post(CHAT, json=chat(f"fault:status:{code}", "code"))
    assert resp.status_code in (502, 503)
    assert error_of(resp, resp.status_code)["type"] == "upstream_error"


def test_a_hanging_expert_is_a_504_after_the_read_timeout(client: httpx.Client) -> None:
    started = time.monotonic()
    resp = client.post(CHAT, json=chat("fault:hang", "code"))
    elapsed = time.monotonic() - started
    assert error_of(resp, 504)["code"] == "upstream_timeout"
    assert READ_TIMEOUT_S <= elapsed < READ_TIMEOUT_S + 3


def test_a_stream_hanging_before_its_first_byte_is_a_504(client: httpx.Client) -> None:
    resp = client.post(CHAT, json=chat("fault:hang", "code", stream=True))
    assert error_of(resp, 504)["code"] == "upstream_timeout"


def test_a_slow_first_byte_within_the_timeout_answers(client: httpx.Client) -> None:
    resp = client.post(CHAT, json=chat("fault:slow_first_byte:1", "code"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "fine answer"


def test_a_slow_stream_within_the_timeout_completes(client: httpx.Client) -> None:
    events = sse(client.post(CHAT, json=chat("fault:slow_stream:0.3", "code", stream=True)))
    words = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert words == "word0 word1 word2 word3 "
