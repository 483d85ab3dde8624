"""When experts fail: retries, timeouts, bad answers, the breaker, streams and disconnects.

These tests are about one expert and its replicas, so cross-expert fallback is off here
(``fallback_hops: 0``); tests/unit/test_fallback.py and tests/faults/ cover it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from coe_router.config import Settings
from coe_router.errors import UpstreamTimeout
from coe_router.experts.breaker import CircuitBreaker
from coe_router.experts.replica import Replica
from coe_router.gateway import create_app
from coe_router.sse import Relay
from tests.fakes import FakeVLLM
from tests.unit.conftest import CODE, GENERAL, app_of, openai_error

CHAT = "/v1/chat/completions"


def chat(content: str = "hi", model: str = "coe", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def make_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """The shared builder, with cross-expert fallback off unless a test turns it on."""

    def build(catalog: dict[str, Any] | None = None, **overrides: Any) -> Settings:
        upstream = {"fallback_hops": 0, **overrides.pop("upstream", {})}
        return make_settings(catalog, upstream=upstream, **overrides)

    return build


CODING = "fix this python function"  # the keyword router sends it to "code" (one replica)
GENERIC = "hi there"  # the generalist (two replicas)


def fail(fake: FakeVLLM, urls: list[str], mode: str, status: int | None = None) -> None:
    """Put every replica in ``urls`` in failure ``mode`` (answering ``status`` if given)."""
    for url in urls:
        fake.of(url).mode = mode
        if status is not None:
            fake.of(url).status = status


async def expect(
    client: httpx.AsyncClient, status: int, content: str = CODING, times: int = 1
) -> dict[str, Any]:
    """Send ``content`` ``times`` times; each answer must have ``status`` (an error in OpenAI
    shape unless 200). Returns the last error (``{}`` for 200)."""
    error: dict[str, Any] = {}
    for _ in range(times):
        resp = await client.post(CHAT, json=chat(content))
        if status == 200:
            assert resp.status_code == 200, resp.text
        else:
            error = openai_error(resp, status)
    return error


def sample(app: FastAPI, name: str, **labels: str) -> float:
    """The value of one sample in the app's /metrics registry (0 when absent)."""
    text = app.state.coe.metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def replica(app: FastAPI, expert: str, index: int = 0) -> Replica:
    r: Replica = app.state.coe.pool.get(expert).replicas[index]
    return r


def sse_events(text: str) -> list[str]:
    """The events of a stream, as a client splits them; every one must be complete."""
    assert text.endswith("\n\n"), text
    return text[: -len("\n\n")].split("\n\n")


def sse_payloads(text: str) -> list[Any]:
    """Every event's JSON (``[DONE]`` last, as the string); fails on any corrupt event."""
    events = sse_events(text)
    assert events[-1] == "data: [DONE]"
    out: list[Any] = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        out.append(json.loads(event[len("data: ") :]))
    return [*out, "[DONE]"]


async def timed(
    make_client: Callable[..., Any], fake: FakeVLLM, read_timeout_s: float
) -> httpx.AsyncClient:
    """A gateway with this read timeout over a fake that honours timeouts (it waits for
    them instead of answering at once)."""
    fake.honour_timeouts = True
    client: httpx.AsyncClient = await make_client(upstream={"read_timeout_s": read_timeout_s})
    return client


# --- non-streaming failures --------------------------------------------------------------------


async def test_down_replica_is_skipped_for_the_other_one(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(GENERAL[0]).mode = "down"
    for _ in range(3):
        resp = await client.post(CHAT, json=chat(GENERIC))
        assert resp.status_code == 200, resp.text
    app = app_of(client)
    assert len(fake.bodies_for(GENERAL[1])) == 3
    # It was tried once (round-robin reaches it), failed, and is now out of rotation.
    assert sample(app, "coe_upstream_errors_total", expert="general", kind="unavailable") == 1
    assert replica(app, "general", 0).state == "down"
    assert replica(app, "general", 1).outstanding == 0


async def test_down_replica_comes_back_after_a_health_round(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "down"
    openai_error(await client.post(CHAT, json=chat(CODING)), 503)
    fake.of(CODE[0]).mode = "ok"
    app = app_of(client)
    assert replica(app, "code").state == "down"
    await app.state.coe.pool.check_all()
    assert replica(app, "code").state == "up"
    assert (await client.post(CHAT, json=chat(CODING))).status_code == 200


async def test_all_replicas_down_is_a_503(
    client: httpx.AsyncClient, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fail(fake, GENERAL, "down")
    resp = await client.post(CHAT, json=chat(GENERIC))
    error = openai_error(resp, 503)
    assert error["type"] == "upstream_error"
    assert error["code"] == "expert_unavailable"
    assert error["param"] is None
    # Replica URLs are logged with the request id, never sent.
    assert "general-a" not in error["message"]
    assert "general-b" not in error["message"]
    assert f"request {resp.headers['x-request-id']}:" in caplog.text
    assert "general-a" in caplog.text or "general-b" in caplog.text
    app = app_of(client)
    assert sample(app, "coe_upstream_errors_total", expert="general", kind="unavailable") == 2
    # Now both are known down: the next request fails at once, naming both.
    error = openai_error(await client.post(CHAT, json=chat(GENERIC)), 503)
    assert "general-a" in caplog.text
    assert "general-b" in caplog.text
    assert sample(app, "coe_requests_total", model="coe", expert="general", status="503") == 2


async def test_hanging_expert_times_out_with_a_504(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await timed(make_client, fake, read_timeout_s=0.05)
    fake.of(CODE[0]).mode = "hang"
    started = time.perf_counter()
    resp = await client.post(CHAT, json=chat(CODING))
    assert time.perf_counter() - started < 2
    error = openai_error(resp, 504)
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_timeout"
    app = app_of(client)
    assert sample(app, "coe_upstream_errors_total", expert="code", kind="timeout") == 1
    # A slow replica is not a dead one: it stays up, and its breaker does not count it.
    assert replica(app, "code").state == "up"
    assert replica(app, "code").breaker.state == "closed"


async def test_read_timeout_of_a_non_streamed_request_is_not_sent_again(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    fake.honour_timeouts = True
    client = await make_client(upstream={"read_timeout_s": 0.05, "breaker_failures": 1})
    fake.of(GENERAL[0]).delay_s = fake.of(GENERAL[1]).delay_s = 5
    for _ in range(3):
        resp = await client.post(CHAT, json=chat(GENERIC))
        assert openai_error(resp, 504)["code"] == "upstream_timeout"
    # Each request reached one replica only: the other would have doubled the work.
    assert len(fake.received) == 3
    app = app_of(client)
    assert all(r.breaker.state == "closed" for r in app.state.coe.pool.get("general").replicas)
    assert (await client.get("/ready")).status_code == 200
    fake.of(GENERAL[0]).delay_s = fake.of(GENERAL[1]).delay_s = 0
    assert (await client.post(CHAT, json=chat(GENERIC))).status_code == 200


async def test_stream_read_timeout_before_the_first_byte_is_retried(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await timed(make_client, fake, read_timeout_s=0.05)
    fake.of(GENERAL[0]).delay_s = 5
    for _ in range(2):  # round-robin: the slow replica is tried first at least once
        resp = await client.post(CHAT, json=chat(GENERIC, stream=True))
        assert sse_payloads(resp.text)[-1] == "[DONE]"
        assert "error" not in resp.text
    assert len(fake.bodies_for(GENERAL[0])) >= 1
    assert len(fake.bodies_for(GENERAL[1])) == 2
    # Slow is not broken: the slow replica's breaker has nothing against it.
    assert replica(app_of(client), "general", 0).breaker.state == "closed"


async def test_slow_expert_within_its_timeout_answers(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await timed(make_client, fake, read_timeout_s=1.0)
    fake.of(CODE[0]).delay_s = 0.02
    assert (await client.post(CHAT, json=chat(CODING))).status_code == 200


@pytest.mark.parametrize("mode", ["garbage", "not_chat"])
async def test_answer_that_is_not_a_chat_completion_is_a_502(
    client: httpx.AsyncClient, fake: FakeVLLM, mode: str
) -> None:
    fake.of(CODE[0]).mode = mode
    error = openai_error(await client.post(CHAT, json=chat(CODING)), 502)
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_bad_response"
    app = app_of(client)
    assert sample(app, "coe_upstream_errors_total", expert="code", kind="bad_response") == 1


async def test_bad_answer_is_retried_on_the_other_replica(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fail(fake, GENERAL, "garbage")
    assert openai_error(await client.post(CHAT, json=chat(GENERIC)), 502)["code"] == (
        "upstream_bad_response"
    )
    assert [len(fake.bodies_for(u)) for u in GENERAL] == [1, 1]


async def test_expert_4xx_is_passed_through_and_not_retried(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fail(fake, GENERAL, "status", 400)
    resp = await client.post(CHAT, json=chat(GENERIC, max_tokens=10**9))
    error = openai_error(resp, 400)
    assert error == {
        "message": "fake error 400",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": "400",
    }
    # The request itself is wrong: asking the other replica would not help.
    assert len(fake.received) == 1
    app = app_of(client)
    assert sample(app, "coe_requests_total", model="coe", expert="general", status="400") == 1


async def test_expert_4xx_does_not_open_the_breaker(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(upstream={"breaker_failures": 1})
    fail(fake, CODE, "status", 422)
    for _ in range(3):
        assert openai_error(await client.post(CHAT, json=chat(CODING)), 422)["code"] == "422"
    assert len(fake.received) == 3
    assert replica(app_of(client), "code").breaker.state == "closed"


async def test_expert_5xx_is_retried_then_a_502(
    client: httpx.AsyncClient, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fail(fake, GENERAL, "status", 500)
    error = openai_error(await client.post(CHAT, json=chat(GENERIC)), 502)
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_error"
    assert "fake error 500" not in error["message"]  # the expert's own text stays in the log
    assert "HTTP 500" in caplog.text
    assert "fake error 500" in caplog.text
    assert [len(fake.bodies_for(u)) for u in GENERAL] == [1, 1]
    # A 500 is the replica's failure, but it answered: it is not marked down.
    assert [replica(app_of(client), "general", i).state for i in (0, 1)] == ["up", "up"]


async def test_one_replica_failing_with_5xx_is_hidden_by_the_other(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(GENERAL[0]).mode = "status"
    for _ in range(4):
        assert (await client.post(CHAT, json=chat(GENERIC))).status_code == 200
    assert len(fake.bodies_for(GENERAL[1])) == 4


async def test_overloaded_expert_429_is_retried_then_a_503(
    client: httpx.AsyncClient, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fail(fake, GENERAL, "status", 429)
    openai_error(await client.post(CHAT, json=chat(GENERIC)), 503)
    assert "HTTP 429" in caplog.text
    assert [len(fake.bodies_for(u)) for u in GENERAL] == [1, 1]
    assert [replica(app_of(client), "general", i).state for i in (0, 1)] == ["up", "up"]


async def test_max_attempts_limits_the_replicas_tried(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(upstream={"max_attempts": 1})
    fail(fake, GENERAL, "status")
    openai_error(await client.post(CHAT, json=chat(GENERIC)), 502)
    assert len(fake.received) == 1


async def failing_code(
    make_client: Callable[..., Any], fake: FakeVLLM, mode: str, **upstream: Any
) -> httpx.AsyncClient:
    """A gateway with these ``upstream`` settings whose "code" replica is in ``mode``."""
    client: httpx.AsyncClient = await make_client(upstream=upstream)
    fake.of(CODE[0]).mode = mode
    return client


# --- circuit breaker ---------------------------------------------------------------------------


async def test_breaker_opens_after_n_failures_and_shuts_the_replica_out(
    make_client: Callable[..., Any], fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    client = await failing_code(make_client, fake, "status", breaker_failures=2, breaker_reset_s=60)
    await expect(client, 502, times=2)
    assert len(fake.received) == 2
    app = app_of(client)
    assert replica(app, "code").breaker.state == "open"
    fake.of(CODE[0]).mode = "ok"  # recovered, but the breaker does not know yet
    for _ in range(3):
        error = await expect(client, 503)
        assert error["code"] == "expert_unavailable"
        assert "breaker open" in caplog.text
    assert len(fake.received) == 2  # nothing reached the replica while open
    assert replica(app, "code").describe()["breaker"] == "open"


async def test_breaker_below_threshold_is_reset_by_a_success(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(upstream={"breaker_failures": 2, "breaker_reset_s": 60})
    b = fake.of(CODE[0])
    for _ in range(3):  # fail, succeed, fail ... never two in a row
        b.mode = "status"
        await expect(client, 502)
        b.mode = "ok"
        await expect(client, 200)
    assert replica(app_of(client), "code").breaker.state == "closed"


async def test_breaker_reset_lets_one_trial_through_and_success_closes_it(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await failing_code(
        make_client, fake, "status", breaker_failures=2, breaker_reset_s=0.05
    )
    await expect(client, 502, times=2)
    breaker = replica(app_of(client), "code").breaker
    assert breaker.state in ("open", "half_open")
    fake.of(CODE[0]).mode = "ok"
    deadline = time.monotonic() + 2
    while breaker.state != "half_open":  # waits breaker_reset_s, no fixed sleep
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await expect(client, 200)
    assert breaker.state == "closed"
    await expect(client, 200)
    assert len(fake.received) == 4


def clocked_breaker(client: httpx.AsyncClient, failures: int) -> tuple[CircuitBreaker, list[float]]:
    """Give the "code" replica a breaker (reset after 10 s) on a clock the test moves."""
    now = [0.0]
    breaker = CircuitBreaker(failures, 10.0, clock=lambda: now[0])
    replica(app_of(client), "code").breaker = breaker
    return breaker, now


async def test_failed_half_open_trial_reopens_the_breaker(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    breaker, now = clocked_breaker(client, 2)
    fake.of(CODE[0]).mode = "status"
    await expect(client, 502, times=2)
    await expect(client, 503)
    assert len(fake.received) == 2
    now[0] = 10.0  # reset elapsed: half-open
    await expect(client, 502)  # the trial, still broken
    assert len(fake.received) == 3
    assert breaker.state == "open"
    now[0] = 19.9  # re-opened at 10.0, so still open
    await expect(client, 503)
    assert len(fake.received) == 3


async def test_half_open_admits_a_single_trial_at_a_time(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    breaker, now = clocked_breaker(client, 1)
    fake.of(CODE[0]).mode = "status"
    await expect(client, 502)
    now[0] = 10.0
    fake.of(CODE[0]).mode = "ok"
    fake.of(CODE[0]).delay_s = 0.05
    fake.arrived.clear()
    trial = asyncio.create_task(client.post(CHAT, json=chat(CODING)))
    await fake.arrived.wait()  # the trial reached the replica
    # Arrives while the trial runs.
    assert (await expect(client, 503))["code"] == "expert_unavailable"
    assert (await trial).status_code == 200
    assert breaker.state == "closed"
    assert len(fake.received) == 2


async def test_recovered_replica_gets_a_fresh_breaker_from_the_health_round(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await failing_code(make_client, fake, "down", breaker_failures=1, breaker_reset_s=60)
    await expect(client, 503)
    app = app_of(client)
    assert replica(app, "code").breaker.state == "open"
    fake.of(CODE[0]).mode = "ok"
    await app.state.coe.pool.check_all()
    assert replica(app, "code").breaker.state == "closed"
    await expect(client, 200)


async def stream(
    client: httpx.AsyncClient, content: str = CODING
) -> tuple[httpx.Response, list[Any]]:
    """A streamed request: it must be a 200 event stream; the response and its payloads."""
    resp = await client.post(CHAT, json=chat(content, stream=True))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    return resp, sse_payloads(resp.text)


# --- streaming ---------------------------------------------------------------------------------


async def test_stream_broken_midway_ends_with_an_in_band_error_and_done(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "midstream"
    # Every event parses: the expert's half-written event must not leak into the stream.
    resp, payloads = await stream(client)
    error = payloads[-2]
    assert list(error) == ["error"]
    assert list(error["error"]) == ["message", "type", "param", "code"]
    assert error["error"]["type"] == "upstream_error"
    assert "partial" not in resp.text
    chunks = payloads[:-2]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == "hello0 "  # what arrived before the break reached the client
    assert fake.closed_streams == 1
    app = app_of(client)
    assert sample(app, "coe_requests_total", expert="code", status="503") == 1
    assert sample(app, "coe_in_flight_requests", expert="code") == 0
    assert replica(app, "code").outstanding == 0


async def test_stream_without_done_gets_an_in_band_error_and_done(
    client: httpx.AsyncClient, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake.of(CODE[0]).mode = "no_done"
    resp, payloads = await stream(client)
    assert payloads[-2]["error"]["code"] == "upstream_bad_response"
    assert "[DONE]" in caplog.text
    assert payloads[-3]["choices"][0]["finish_reason"] == "stop"  # all content came through
    assert sse_events(resp.text).count("data: [DONE]") == 1
    assert sample(app_of(client), "coe_requests_total", expert="code", status="502") == 1


async def test_stream_events_split_across_reads_reach_the_client_whole(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).split = True
    _, payloads = await stream(client)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in payloads[:-1])
    assert content == "hello0 hello1 hello2 "


async def test_stream_timeout_between_chunks_is_an_in_band_504(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await timed(make_client, fake, read_timeout_s=0.05)
    fake.of(CODE[0]).chunk_delay_s = 5
    _, payloads = await stream(client)
    assert payloads[-2]["error"]["code"] == "upstream_timeout"
    assert fake.closed_streams == 1


async def test_stream_failing_before_the_first_byte_is_retried(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(GENERAL[0]).mode = "down"
    for _ in range(3):
        _, payloads = await stream(client, GENERIC)
        assert all("error" not in p for p in payloads[:-1])
    assert len(fake.bodies_for(GENERAL[1])) == 3
    app = app_of(client)
    assert sample(app, "coe_upstream_errors_total", expert="general", kind="unavailable") == 1


async def test_stream_with_5xx_before_the_first_byte_is_retried(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(GENERAL[0]).mode = "status"
    for _ in range(2):
        resp = await client.post(CHAT, json=chat(GENERIC, stream=True))
        assert sse_payloads(resp.text)[-1] == "[DONE]"
        assert "error" not in resp.text
    assert len(fake.bodies_for(GENERAL[1])) == 2
    failed = len(fake.bodies_for(GENERAL[0]))
    assert failed >= 1  # round-robin tried it, and the 500 was hidden by a retry
    app = app_of(client)
    assert sample(app, "coe_upstream_errors_total", expert="general", kind="error") == failed


async def test_stream_with_all_replicas_down_is_a_plain_503(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fail(fake, GENERAL, "down")
    resp = await client.post(CHAT, json=chat(GENERIC, stream=True))
    error = openai_error(resp, 503)  # JSON, not an event stream
    assert error["code"] == "expert_unavailable"
    app = app_of(client)
    assert sample(app, "coe_in_flight_requests", expert="general") == 0


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [("status", 400, "400"), ("garbage", 502, "upstream_bad_response")],
)
async def test_stream_rejected_before_the_first_byte_is_a_json_error(
    client: httpx.AsyncClient, fake: FakeVLLM, mode: str, status: int, code: str
) -> None:
    fake.of(CODE[0]).mode = mode
    fake.of(CODE[0]).status = 400
    resp = await client.post(CHAT, json=chat(CODING, stream=True))
    assert openai_error(resp, status)["code"] == code
    assert replica(app_of(client), "code").outstanding == 0


# --- client disconnects (raw ASGI: httpx's ASGITransport cannot hang up) ------------------------


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn reports
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": CHAT,
        "raw_path": CHAT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "server": ("gateway", 80),
        "client": ("127.0.0.1", 50000),
    }


async def call_and_hang_up(
    app: FastAPI,
    body: dict[str, Any],
    hang_up: asyncio.Event,
    on_send: Callable[[dict[str, Any]], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Drive ``app`` for one request; the client disconnects once ``hang_up`` is set.

    Returns what the app sent. Fails if the app does not return within 2 s.
    """
    raw = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    receives = 0

    async def receive() -> dict[str, Any]:
        nonlocal receives
        receives += 1
        if receives == 1:
            return {"type": "http.request", "body": raw, "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        on_send(message)

    await asyncio.wait_for(app(_scope(raw), receive, send), timeout=2)
    return sent


@pytest.fixture
async def app(fake: FakeVLLM, make_settings: Callable[..., Settings]) -> Any:
    app = create_app(make_settings(), upstream_transport=fake.transport())
    async with app.router.lifespan_context(app):
        yield app


async def test_disconnect_cancels_a_waiting_completion(app: FastAPI, fake: FakeVLLM) -> None:
    fake.of(CODE[0]).mode = "hang"
    sent = await call_and_hang_up(app, chat(CODING), fake.arrived)
    assert fake.cancelled == 1  # the upstream call was cancelled, not left to hang
    assert sent[0]["status"] == 499
    assert sample(app, "coe_requests_total", expert="code", status="499") == 1
    assert sample(app, "coe_in_flight_requests", expert="code") == 0
    target = replica(app, "code")
    assert target.outstanding == 0
    assert target.breaker.state == "closed"  # a client leaving says nothing about the replica
    assert target.state == "up"


async def test_disconnect_before_the_first_stream_byte_cancels_the_upstream(
    app: FastAPI, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "hang"
    await call_and_hang_up(app, chat(CODING, stream=True), fake.arrived)
    assert fake.cancelled == 1
    assert sample(app, "coe_requests_total", expert="code", status="499") == 1
    assert sample(app, "coe_in_flight_requests", expert="code") == 0
    assert replica(app, "code").outstanding == 0


async def test_disconnect_mid_stream_closes_the_upstream_stream(
    app: FastAPI, fake: FakeVLLM
) -> None:
    b = fake.of(CODE[0])
    b.tokens, b.chunk_delay_s = 1000, 0.01  # ten seconds of tokens if nobody stops it

    got_a_token = asyncio.Event()

    def watch(message: dict[str, Any]) -> None:
        if b"hello0" in message.get("body", b""):
            got_a_token.set()

    started = time.perf_counter()
    sent = await call_and_hang_up(app, chat(CODING, stream=True), got_a_token, watch)
    assert time.perf_counter() - started < 2
    assert sent[0]["status"] == 200
    assert not any(b"[DONE]" in m.get("body", b"") for m in sent)
    assert fake.closed_streams == 1
    assert sample(app, "coe_in_flight_requests", expert="code") == 0
    assert sample(app, "coe_requests_total", expert="code", status="499") == 1
    assert replica(app, "code").outstanding == 0


async def test_each_body_message_of_a_stream_holds_whole_events(
    app: FastAPI, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).split = True
    sent = await call_and_hang_up(app, chat(CODING, stream=True), asyncio.Event())
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")]
    assert len(bodies) > 3
    for body in bodies:
        assert body.endswith(b"\n\n")
        for event in body[:-2].split(b"\n\n"):
            assert event == b"data: [DONE]" or json.loads(event[len(b"data: ") :])
    assert fake.closed_streams == 1


async def test_expert_still_loading_is_a_503_with_retry_after(
    client: httpx.AsyncClient, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    # What the health loop reports while a launched expert loads its weights.
    target = replica(app_of(client), "code")
    target.state, target.detail = "starting", "loading for 12 s"
    resp = await client.post(CHAT, json=chat(CODING))
    error = openai_error(resp, 503)
    assert error["code"] == "expert_starting"
    assert "loading for 12 s" in caplog.text
    assert resp.headers["retry-after"] == "5"
    assert fake.received == []


# --- the relay, on its own ---------------------------------------------------------------------


class StubUpstream:
    """Stands in for an open upstream stream: fixed writes, then optionally an error."""

    def __init__(self, writes: list[bytes], error: Exception | None = None) -> None:
        self.writes, self.error, self.closed = writes, error, 0
        self.max_event_bytes = 1024 * 1024

    async def __aiter__(self) -> Any:
        for w in self.writes:
            yield w
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed += 1


class Outcomes:
    def __init__(self) -> None:
        self.first_bytes = 0
        self.ends: list[str] = []

    def relay(self, upstream: StubUpstream) -> Relay:
        def first() -> None:
            self.first_bytes += 1

        return Relay(upstream, on_first_byte=first, on_end=self.ends.append)  # type: ignore[arg-type]


async def drain(relay: Relay) -> list[bytes]:
    out = [chunk async for chunk in relay]
    await relay.aclose()  # what SSEResponse always does afterwards
    return out


EVENT = b'data: {"a":1}\n\n'


async def test_relay_joins_events_split_across_writes() -> None:
    seen = Outcomes()
    upstream = StubUpstream([b'data: {"a"', b":1}\n", b"\ndata: [DO", b"NE]\n\n"])
    assert await drain(seen.relay(upstream)) == [EVENT, b"data: [DONE]\n\n"]
    assert seen.first_bytes == 1
    assert seen.ends == ["200"]
    assert upstream.closed == 1


async def test_relay_understands_crlf_events() -> None:
    seen = Outcomes()
    writes = [b'data: {"a":1}\r\n\r\ndata: {"b"', b":2}\r\n\r\ndata: [DONE]\r\n\r\n"]
    out = await drain(seen.relay(StubUpstream(writes)))
    assert out == [b'data: {"a":1}\r\n\r\n', b'data: {"b":2}\r\n\r\ndata: [DONE]\r\n\r\n']
    assert seen.ends == ["200"]


async def test_relay_completes_a_done_without_its_blank_line() -> None:
    seen = Outcomes()
    out = await drain(seen.relay(StubUpstream([EVENT, b"data: [DONE]"])))
    assert out == [EVENT, b"data: [DONE]\n\n"]
    assert seen.ends == ["200"]


async def test_relay_drops_a_truncated_last_event_and_reports_it() -> None:
    seen = Outcomes()
    out = await drain(seen.relay(StubUpstream([EVENT, b'data: {"cut'])))
    assert out[0] == EVENT
    assert b"cut" not in b"".join(out)
    assert out[1].endswith(b"data: [DONE]\n\n")
    error = json.loads(out[1].split(b"\n\n")[0][len(b"data: ") :])
    assert error["error"]["code"] == "upstream_bad_response"
    assert seen.ends == ["502"]


async def test_relay_turns_an_upstream_error_into_an_event() -> None:
    seen = Outcomes()
    upstream = StubUpstream([EVENT, b'data: {"half'], UpstreamTimeout("expert 'x' timed out"))
    out = await drain(seen.relay(upstream))
    events = b"".join(out).decode()
    assert sse_payloads(events)[-2] == {
        "error": {
            "message": "The expert did not answer in time.",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_timeout",
        }
    }
    assert seen.ends == ["504"]
    assert upstream.closed == 1


async def test_relay_closed_before_it_started_reports_a_client_disconnect() -> None:
    seen = Outcomes()
    upstream = StubUpstream([EVENT])
    relay = seen.relay(upstream)
    await relay.aclose()
    await relay.aclose()
    assert seen.ends == ["499"]
    assert seen.first_bytes == 0
    assert upstream.closed == 1


async def test_relay_closed_midway_reports_a_client_disconnect_once() -> None:
    seen = Outcomes()
    upstream = StubUpstream([EVENT, EVENT, b"data: [DONE]\n\n"])
    relay = seen.relay(upstream)
    iterator = aiter(relay)
    assert await anext(iterator) == EVENT
    await relay.aclose()
    assert seen.ends == ["499"]
    assert upstream.closed == 1
