"""Gateways on a real Redis: shared affinity and limits, Redis stopping and coming back.

The gateways are real ``create_app()`` apps over the fake vLLM (``httpx.MockTransport``);
only Redis is a real process (the ``redis_server`` / ``own_redis`` fixtures).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coe_router.config import Settings
from coe_router.gateway import create_app
from router_training import replay
from tests.conversation import chat, next_turn, routing, settle, state_of
from tests.fakes import FakeVLLM
from tests.support import RedisServer, in_process_client, keyword_catalog

Gateways = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def gateways(tmp_path: Path, fake: FakeVLLM) -> AsyncIterator[Gateways]:
    """Start gateway apps (``create_app`` + lifespan) on a Redis URL; all stop at the end."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(keyword_catalog(cache_ttl_s=60)))
    prefix = f"t{uuid.uuid4().hex[:8]}:"  # this test's keys only, on the shared server
    async with AsyncExitStack() as stack:

        async def start(url: str, **overrides: Any) -> httpx.AsyncClient:
            state = {"prefix": prefix, **overrides.pop("state", {})}
            settings = Settings(catalog=catalog, redis_url=url, state=state, **overrides)
            app = create_app(settings, upstream_transport=fake.transport())
            return await stack.enter_async_context(in_process_client(app))

        yield start


@pytest.fixture
def fake() -> FakeVLLM:
    return FakeVLLM()


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_two_gateways_share_affinity_limits_and_cache(
    gateways: Gateways, redis_server: RedisServer, fake: FakeVLLM
) -> None:
    a = await gateways(redis_server.url, rate_limits={"requests_per_min": 4})
    b = await gateways(redis_server.url, rate_limits={"requests_per_min": 4})
    first = [{"role": "user", "content": "hi there"}]
    resp = await a.post("/v1/chat/completions", json=chat(first))
    assert routing(resp) == ("general", "new")
    await settle(a)
    # The next turn reaches the other gateway: it knows the conversation.
    turn = next_turn(first, "hello", "python")
    resp = await b.post("/v1/chat/completions", json=chat(turn))
    assert routing(resp) == ("general", "sticky")
    # The cache too: b answered it, a replays it.
    await settle(b)
    cached = await a.post("/v1/chat/completions", json=chat(turn))
    assert cached.headers["x-coe-cache"] == "hit"
    assert len(fake.received) == 2
    # One budget of 4 requests per key across both gateways: 3 used, one left.
    assert (await b.post("/v1/chat/completions", json=chat("x"))).status_code == 200
    for client in (a, b):
        refused = await client.post("/v1/chat/completions", json=chat("y"))
        assert refused.status_code == 429, refused.text
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_requests_survive_redis_stopping_and_state_resumes(
    gateways: Gateways, own_redis: RedisServer, fake: FakeVLLM
) -> None:
    gw = await gateways(
        own_redis.url,
        rate_limits={"requests_per_min": 1000},
        state={"retry_interval_s": 0.2},
    )
    resp = await gw.post("/v1/chat/completions", json=chat("python bug"))
    assert resp.headers["x-coe-affinity"] == "new"
    assert resp.headers["x-ratelimit-remaining-requests"] == "999"
    await settle(gw)

    own_redis.stop()
    for i in range(10):
        t0 = time.perf_counter()
        resp = await gw.post("/v1/chat/completions", json=chat(f"python bug {i}"))
        assert resp.status_code == 200, resp.text
        assert time.perf_counter() - t0 < 2.0
        assert resp.headers["x-coe-expert"] == "code"
        assert "x-coe-affinity" not in resp.headers  # skipped while Redis is away
        assert "x-ratelimit-remaining-requests" not in resp.headers  # failed open
        assert resp.headers["x-coe-cache"] == "miss"
    await settle(gw)
    text = (await gw.get("/metrics")).text
    assert metric(text, 'coe_state_errors_total{op="rate_limit"}') >= 1

    own_redis.start()  # same port, empty (no persistence)
    deadline = time.monotonic() + 10
    while True:  # the client reconnects by itself once the retry interval has passed
        resp = await gw.post("/v1/chat/completions", json=chat("python bug again"))
        assert resp.status_code == 200
        if "x-coe-affinity" in resp.headers:
            break
        assert time.monotonic() < deadline, "state did not resume after Redis came back"
        await state_of(gw).shared.background.drain()
        await asyncio.sleep(0.05)
    assert resp.headers["x-coe-affinity"] == "new"  # Redis restarted empty
    assert resp.headers["x-ratelimit-remaining-requests"] == "999"
    await settle(gw)
    cached = await gw.post("/v1/chat/completions", json=chat("python bug again"))
    assert cached.headers["x-coe-cache"] == "hit"  # a hit skips routing: no affinity header
    turn = [
        {"role": "user", "content": "python bug again"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and a poem"},
    ]
    again = await gw.post("/v1/chat/completions", json=chat(turn))
    assert routing(again) == ("code", "sticky")


async def test_a_hung_redis_costs_one_timeout_then_nothing(
    gateways: Gateways, own_redis: RedisServer
) -> None:
    gw = await gateways(
        own_redis.url,
        state={"socket_timeout_s": 0.1, "connect_timeout_s": 0.1, "retry_interval_s": 30},
    )
    assert (await gw.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
    await settle(gw)
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        t0 = time.perf_counter()
        first = await gw.post("/v1/chat/completions", json=chat("hi"))
        slow = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(5):
            assert (await gw.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
        fast = (time.perf_counter() - t0) / 5
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert first.status_code == 200
    assert "x-coe-affinity" not in first.headers
    assert slow < 1.0  # bounded by the socket timeout, not by the OS
    assert fast < 0.05  # skipped during the retry interval


async def test_the_decision_log_replays_into_an_evaluation_set(
    gateways: Gateways, redis_server: RedisServer, tmp_path: Path
) -> None:
    gw = await gateways(redis_server.url, decision_log={"enabled": True, "max_entries": 100})
    prompts = ["fix this python function", "write a poem about rain", "hello"]
    for prompt in prompts:
        await gw.post("/v1/chat/completions", json=chat(prompt))
    await gw.post("/v1/chat/completions", json=chat(prompts[0]))  # a repeat: cached, not routed
    await settle(gw)
    out = tmp_path / "replay.jsonl"
    prefix = state_of(gw).settings.state.prefix
    code = await replay.run(
        ["--redis-url", redis_server.url, "--prefix", prefix, "--out", str(out)]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    by_prompt = {r["prompt"]: r for r in rows}
    assert by_prompt[prompts[0]]["category"] == "code"
    assert by_prompt[prompts[0]]["expert"] == "code"
    assert by_prompt[prompts[1]]["category"] == "writing"
    assert all(0 <= r["confidence"] <= 1 and r["source"] == "replay:coe" for r in rows)
