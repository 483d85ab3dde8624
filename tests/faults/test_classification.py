"""Failures are classified, not counted: slow generations do not black out an expert, and
``/ready`` agrees with the breakers. The real gateway process over fake upstream processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.upstreams import (
    ADMIN,
    CHAT,
    FakeUpstream,
    catalog,
    chat,
    error_of,
    gateway,
    running,
)
from tests.support import GatewayProcess

READ_TIMEOUT_S = 3.0
BREAKER_RESET_S = 4.0


@pytest.fixture(scope="module")
def general(fakes: Callable[[], FakeUpstream]) -> list[FakeUpstream]:
    return [fakes(), fakes()]


@pytest.fixture(scope="module")
def code(fakes: Callable[[], FakeUpstream]) -> FakeUpstream:
    return fakes()


@pytest.fixture(scope="module")
def gw(
    general: list[FakeUpstream], code: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    cat = catalog([f.url for f in general], [code.url])
    cat["experts"][1]["required"] = True  # /ready must speak for code too
    env = {
        "COE_UPSTREAM__READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "COE_UPSTREAM__BREAKER_RESET_S": str(BREAKER_RESET_S),
    }
    with running(gateway(tmp_path_factory.mktemp("gw"), cat, env)) as gw:
        yield gw


@pytest.fixture
def client(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        yield c


def test_slow_generations_do_not_black_out_an_expert(
    client: httpx.Client, general: list[FakeUpstream]
) -> None:
    """Both replicas slower than the read timeout for three requests: three 504s, nothing
    sent twice, no breaker opened, still ready, and the next request is served at once."""
    for fake in general:
        fake.control(default="fault:slow_first_byte:6", reset=True)
    try:
        with ThreadPoolExecutor(3) as pool:
            resps = list(pool.map(lambda _: client.post(CHAT, json=chat("hi", "general")),
                                  range(3)))  # fmt: skip
    finally:
        for fake in general:
            fake.control(default=None)
    for resp in resps:
        assert error_of(resp, 504)["code"] == "upstream_timeout"
    # A read timeout after the request was sent is not retried: it would double the load.
    assert sum(f.count("chat") for f in general) == 3
    ready = client.get("/ready", headers=ADMIN)
    assert ready.status_code == 200, ready.text
    replicas = ready.json()["experts"]["general"]["replicas"]
    assert [r["breaker"] for r in replicas] == ["closed", "closed"]
    started = time.monotonic()
    resp = client.post(CHAT, json=chat("hi", "general"))
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started < 2


def test_ready_agrees_with_the_breakers(
    gw: GatewayProcess, client: httpx.Client, code: FakeUpstream
) -> None:
    """Code's only replica answers 500 until its breaker opens: /ready says code is not
    live, /v1/route sends code's requests to the generalist; after the reset, live again."""
    code.control(default="fault:status:500")
    try:
        for _ in range(3):  # COE_UPSTREAM__BREAKER_FAILURES (3)
            assert client.post(CHAT, json=chat("hi", "code")).status_code == 502
        opened = time.monotonic()
        ready = client.get("/ready", headers=ADMIN)
        assert error_of(ready, 503)["code"] == "not_ready"
        entry = ready.json()["experts"]["code"]
        assert entry["live"] is False
        assert entry["replicas"][0]["breaker"] == "open"
        route = client.post("/v1/route", json=chat("a python function")).json()
        assert route["expert"] == "general"
        assert route["fallback"] == {"from": "code", "reason": "no_live_replica"}
        models = client.get("/v1/models").json()["data"]
        assert next(m for m in models if m["id"] == "code")["coe"]["live"] is False
    finally:
        code.control(default=None)
    time.sleep(max(0.0, BREAKER_RESET_S - (time.monotonic() - opened)) + 0.2)
    # Half-open: a trial may go through.
    assert client.get("/ready", headers=ADMIN).status_code == 200
    resp = client.post(CHAT, json=chat("a python function"))
    assert resp.headers["x-coe-expert"] == "code"
    assert "x-coe-fallback" not in resp.headers


def test_a_full_connection_pool_is_a_503_not_a_replica_failure(
    fakes: Callable[[], FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One connection to code's only replica, held by a slow generation: the next request
    waits the pool timeout, gets 503 ``upstream_saturated``, and the replica's breaker
    (threshold 1 here) does not count it."""
    fake = fakes()
    env = {
        "COE_UPSTREAM__MAX_CONNECTIONS": "1",
        "COE_UPSTREAM__POOL_TIMEOUT_S": "0.5",
        "COE_UPSTREAM__BREAKER_FAILURES": "1",
    }
    cat = catalog([fake.url], [fake.url])
    with (
        running(gateway(tmp_path_factory.mktemp("pool"), cat, env)) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        slow = pool.submit(client.post, CHAT, json=chat("fault:slow_first_byte:3", "code"))
        deadline = time.monotonic() + 5
        while fake.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        error = error_of(client.post(CHAT, json=chat("hi", "code")), 503)
        assert error["code"] == "upstream_saturated"
        replica = client.get("/ready", headers=ADMIN).json()["experts"]["code"]["replicas"][0]
        assert (replica["state"], replica["breaker"]) == ("up", "closed")
        assert slow.result().status_code == 200
        assert client.post(CHAT, json=chat("hi", "code")).status_code == 200
