"""Cross-expert fallback against the real gateway process: an expert with no live replica,
or failing before the first byte, is stood in for by the next candidate; never after."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.faults.upstreams import (
    CHAT,
    FakeUpstream,
    catalog,
    chat,
    closed_url,
    error_of,
    sse,
)
from tests.support import GatewayProcess


@pytest.fixture(scope="module")
def general(fakes: Callable[[], FakeUpstream]) -> FakeUpstream:
    return fakes()


@pytest.fixture(scope="module")
def math(fakes: Callable[[], FakeUpstream]) -> FakeUpstream:
    return fakes()


@pytest.fixture(scope="module")
def gw(
    general: FakeUpstream, math: FakeUpstream, fake_gateway: Callable[..., GatewayProcess]
) -> GatewayProcess:
    """``code`` has one replica where nothing listens; ``math`` is up (its fake is told
    what to do); ``general`` is the generalist."""
    cat = catalog(
        [general.url], [closed_url()],
        extra=[{"name": "math", "served_model_name": "fake-math", "categories": ["math"],
                "replicas": [math.url]}],
    )  # fmt: skip
    return fake_gateway(cat)


def test_a_down_expert_falls_back_to_the_generalist(
    client: httpx.Client, general: FakeUpstream
) -> None:
    before = general.count()
    resp = client.post(CHAT, json=chat("write a python function"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-fallback"] == "code->general"
    assert resp.headers["x-coe-expert"] == "general"
    body = resp.json()
    assert body["model"] == "fake-general"
    assert body["coe"]["expert"] == "general"
    assert body["coe"]["fallback"] == {"from": "code", "reason": "no_live_replica"}
    assert general.count() == before + 1


def test_a_down_experts_stream_falls_back(client: httpx.Client) -> None:
    resp = client.post(CHAT, json=chat("write a python function", stream=True))
    assert resp.headers["x-coe-fallback"] == "code->general"
    events = sse(resp)
    # Errors first, and every event in the message: a stray event must say what it was.
    assert all("error" not in e for e in events[:-1]), events
    assert {e.get("model") for e in events[:-1]} == {"fake-general"}, events


def test_route_skips_the_down_expert(client: httpx.Client) -> None:
    route = client.post("/v1/route", json=chat("write a python function")).json()
    assert route["expert"] == "general"
    assert route["category"] == "code"
    assert route["fallback"] == {"from": "code", "reason": "no_live_replica"}


def test_naming_the_down_expert_is_a_503(client: httpx.Client) -> None:
    resp = client.post(CHAT, json=chat("write a python function", "code"))
    assert error_of(resp, 503)["code"] == "expert_unavailable"


def test_a_failure_before_the_first_byte_falls_back(
    client: httpx.Client, math: FakeUpstream
) -> None:
    math.control(default="fault:status:500")
    try:
        resp = client.post(CHAT, json=chat("solve this equation"))
        stream = client.post(CHAT, json=chat("solve this equation", stream=True))
    finally:
        math.control(default=None)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-fallback"] == "math->general"
    assert resp.json()["coe"]["fallback"] == {"from": "math", "reason": "error"}
    assert stream.headers["x-coe-fallback"] == "math->general"
    assert sse(stream)[-1] == "[DONE]"


def test_a_failure_after_the_first_byte_does_not_fall_back(
    client: httpx.Client, math: FakeUpstream, general: FakeUpstream
) -> None:
    before = general.count()
    math.control(default="fault:midstream_close")
    try:
        resp = client.post(CHAT, json=chat("solve this equation", stream=True))
    finally:
        math.control(default=None)
    assert "x-coe-fallback" not in resp.headers
    assert resp.headers["x-coe-expert"] == "math"
    events = sse(resp)
    assert events[-2]["error"]["type"] == "upstream_error"
    assert general.count() == before  # nobody else was asked
