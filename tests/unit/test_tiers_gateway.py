"""The tiered pool through the gateway: fake sleep-mode replicas behind MockTransport."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coe_router.config import Settings, TierSettings
from coe_router.errors import ConfigError
from coe_router.gateway import create_app
from tests.fake_sleep import FakeGPU, FakeSleepFleet
from tests.unit.conftest import openai_error
from tests.unit.tier_fakes import (
    ADMIN,
    ADMIN_KEY,
    Build,
    chat,
    content_of,
    rep,
    settle,
    start_gateway,
    wait_for,
    wake_ups,
)


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[Build]:
    async with AsyncExitStack() as stack:
        yield functools.partial(start_gateway, stack, tmp_path)


# --- the request path ---------------------------------------------------------------------


async def test_concurrent_requests_for_a_cold_expert_share_one_wake(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a", wake_s=0.01, reload_s=0.03, generate_s=0.005)])
    resps = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=chat("a"))
                                   for _ in range(8)))  # fmt: skip
    assert [content_of(r) for r in resps] == ["a says hi"] * 8  # reloaded: not garbage
    assert wake_ups(gw.replica("a")) == [
        "POST /wake_up?tags=weights", "POST /collective_rpc", "POST /wake_up?tags=kv_cache",
    ]  # fmt: skip
    e = gw.scheduler.experts["a"]
    assert (e.tier.value, e.in_flight, e.wakes, len(e.waiters)) == ("hot", 0, 1, 0)
    assert gw.fleet.gpu.violations == []


async def test_requests_swap_experts_within_the_budget(make_gateway: Build) -> None:
    reps = [rep(n, wake_s=0.005, reload_s=0.005, generate_s=0.002) for n in "abc"]
    gw = await make_gateway(reps, budget=17, tier={"a": {"sleep_level": 2}})
    models = ["a", "b", "c", "a", "c", "b", "a", "b"]
    resps = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=chat(m))
                                   for m in models))  # fmt: skip
    assert [content_of(r) for r in resps] == [f"{m} says hi" for m in models]
    assert gw.fleet.gpu.violations == []
    assert gw.fleet.gpu.peak_gb["gpu0"] <= 17
    assert all(e.in_flight == 0 for e in gw.scheduler.experts.values())


async def test_a_stream_request_releases_the_expert(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a")])
    # The fake answers a stream request with plain JSON; whatever comes of it, the
    # slot on the tiered pool is handed back once the response is over.
    resp = await gw.client.post("/v1/chat/completions", json=chat("a", stream=True))
    await resp.aread()
    assert gw.scheduler.experts["a"].tier.value == "hot"
    assert gw.scheduler.experts["a"].in_flight == 0


async def test_a_failed_wake_is_a_503_for_every_waiter_then_fast_then_retried(
    make_gateway: Build,
) -> None:
    gw = await make_gateway([rep("a", fail_wake=True, reload_s=0.01)], failure_backoff_s=0.3)
    resps = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=chat("a"))
                                   for _ in range(5)))  # fmt: skip
    for r in resps:
        error = openai_error(r, 503)
        assert error["code"] == "expert_unavailable"
        assert "failed to wake" in error["message"]
    e = gw.scheduler.experts["a"]
    assert e.wake_failures == 1
    calls = len(wake_ups(gw.replica("a")))
    # During the backoff: a fast 503, without touching the expert.
    error = openai_error(await gw.client.post("/v1/chat/completions", json=chat("a")), 503)
    assert error["code"] == "expert_unavailable"
    assert "retry after" in error["message"]
    assert len(wake_ups(gw.replica("a"))) == calls
    await asyncio.sleep(0.35)
    assert content_of(await gw.client.post("/v1/chat/completions", json=chat("a"))) == "a says hi"
    assert gw.fleet.gpu.violations == []


async def test_a_wake_timeout_is_a_503(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a", reload_s=5.0)], wake_timeout_s=0.05)
    error = openai_error(await gw.client.post("/v1/chat/completions", json=chat("a")), 503)
    assert error["code"] == "expert_unavailable"
    assert "timed out" in error["message"]


async def test_queue_timeout_is_a_504_and_the_pinned_expert_stays(make_gateway: Build) -> None:
    gw = await make_gateway(
        [rep("a"), rep("b")], budget=10, awake=("a",), tier={"a": {"pinned": True}},
        queue_timeout_s=0.1,
    )  # fmt: skip
    error = openai_error(await gw.client.post("/v1/chat/completions", json=chat("b")), 504)
    assert error["code"] == "upstream_timeout"
    assert gw.scheduler.experts["a"].tier.value == "hot"
    assert gw.replica("a").calls.count("POST /sleep?level=1&mode=wait") == 0
    assert content_of(await gw.client.post("/v1/chat/completions", json=chat("a"))) == "a says hi"


async def test_a_client_that_hangs_up_while_waiting_leaks_nothing(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a", reload_s=0.2)])
    body = json.dumps(chat("a")).encode()
    sent: list[dict[str, Any]] = []
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "server": ("gw", 80), "client": ("c", 1),
        "headers": [(b"host", b"gw"), (b"content-type", b"application/json")],
        "state": {},
    }  # fmt: skip
    call = asyncio.create_task(gw.app(scope, receive, send))
    e = gw.scheduler.experts["a"]
    await wait_for(lambda: len(e.waiters) == 1)
    disconnect.set()
    await call
    assert messages[0]["status"] == 499
    assert (e.in_flight, len(e.waiters)) == (0, 0)
    await settle(gw.scheduler)
    assert e.in_flight == 0
    assert content_of(await gw.client.post("/v1/chat/completions", json=chat("a"))) == "a says hi"


async def test_a_failed_sleep_keeps_the_expert_serving(make_gateway: Build) -> None:
    def failing_sleep(fleet: FakeSleepFleet) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/sleep":
                return httpx.Response(500, json={"detail": "sleep failed"})
            return await fleet.handle(request)

        return httpx.MockTransport(handle)

    gw = await make_gateway(
        [rep("a"), rep("b")], budget=10, awake=("a",), transport=failing_sleep,
        queue_timeout_s=0.2, failure_backoff_s=30.0,
    )  # fmt: skip
    b = asyncio.create_task(gw.client.post("/v1/chat/completions", json=chat("b")))
    await wait_for(lambda: "sleep failed" in gw.scheduler.experts["a"].last_error)
    assert content_of(await gw.client.post("/v1/chat/completions", json=chat("a"))) == "a says hi"
    openai_error(await b, 504)
    assert gw.scheduler.experts["a"].tier.value == "hot"
    assert gw.fleet.gpu.violations == []


async def test_an_expert_larger_than_its_budget_fails_at_start(tmp_path: Path) -> None:
    catalog = {
        "experts": [
            {
                "name": "big",
                "served_model_name": "big",
                "memory_gb": 30,
                "replicas": ["http://big:8000"],
                "tier": {"sleep_mode": True},
            }
        ]
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(catalog))
    settings = Settings(catalog=path, tiers=TierSettings(enabled=True, budgets_gb={"gpu0": 20}))
    app = create_app(settings, upstream_transport=FakeSleepFleet(FakeGPU({})).transport())
    with pytest.raises(ConfigError, match="big"):
        async with app.router.lifespan_context(app):
            pass


# --- /ready, admin, metrics ---------------------------------------------------------------


async def test_ready_counts_sleeping_experts_as_ready(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b")], awake=("b",))
    resp = await gw.client.get("/ready")
    assert resp.status_code == 200, resp.text
    experts = resp.json()["experts"]
    assert (experts["a"]["tier"], experts["a"]["live"]) == ("cold", True)
    assert experts["b"]["tier"] == "hot"


async def test_admin_experts_shows_tiering(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b", 4)], budget=16, awake=("b",),
                            tier={"b": {"pinned": True}})  # fmt: skip
    assert content_of(await gw.client.post("/v1/chat/completions", json=chat("a"))) == "a says hi"
    resp = await gw.client.get("/admin/experts", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    data = {e["name"]: e["tiering"] for e in body["data"]}
    a, b = data["a"], data["b"]
    assert (a["tier"], a["memory_gb"], a["in_flight"], a["wakes"], a["uses"]) == ("hot", 8, 0, 1, 1)
    assert a["device"] == "gpu0"
    assert a["pinned"] is False
    assert set(a["wake_s"]) == {"cold"}
    assert a["last_used_s_ago"] >= 0
    assert (b["tier"], b["pinned"], b["wakes"], b["last_used_s_ago"]) == ("hot", True, 0, None)
    assert body["devices"] == {"gpu0": {"budget_gb": 16, "used_gb": 12}}


async def test_admin_wake_sleep_pin_unpin(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b")], budget=10)
    resp = await gw.client.post("/admin/experts/a/wake", headers=ADMIN)
    assert resp.json() == {"name": "a", "tier": "hot", "pinned": False}
    resp = await gw.client.post("/admin/experts/a/pin", headers=ADMIN)
    assert resp.json() == {"name": "a", "tier": "hot", "pinned": True}
    error = openai_error(await gw.client.post("/admin/experts/a/sleep", headers=ADMIN), 503)
    assert "pinned" in error["message"]
    resp = await gw.client.post("/admin/experts/a/unpin", headers=ADMIN)
    assert resp.json()["pinned"] is False
    resp = await gw.client.post("/admin/experts/a/sleep", headers=ADMIN)
    assert resp.json() == {"name": "a", "tier": "warm", "pinned": False}
    assert "POST /sleep?level=1&mode=wait" in gw.replica("a").calls
    # Waking "b" is a request like any other: it fits now.
    resp = await gw.client.post("/admin/experts/b/wake", headers=ADMIN)
    assert resp.json()["tier"] == "hot"
    assert gw.fleet.gpu.violations == []


async def test_admin_routes_need_the_admin_key(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a")])
    openai_error(await gw.client.post("/admin/experts/a/wake"), 401)
    wrong = {"authorization": "Bearer nope"}
    assert (await gw.client.post("/admin/experts/a/wake", headers=wrong)).status_code in (401, 403)
    assert (await gw.client.get("/admin/experts", headers=wrong)).status_code in (401, 403)
    assert gw.scheduler.experts["a"].tier.value == "cold"
    assert wake_ups(gw.replica("a")) == []


async def test_admin_unknown_expert_is_404(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a")])
    error = openai_error(await gw.client.post("/admin/experts/nope/wake", headers=ADMIN), 404)
    assert error["code"] == "model_not_found"


async def test_admin_tier_actions_when_tiering_is_off(make_gateway: Build, tmp_path: Path) -> None:
    catalog = {"experts": [{"name": "a", "served_model_name": "a", "replicas": ["http://a:8000"]}]}
    path = tmp_path / "off.yaml"
    path.write_text(yaml.safe_dump(catalog))
    fleet = FakeSleepFleet(FakeGPU({"gpu0": 20}))
    fleet.add(rep("a"))
    app = create_app(Settings(catalog=path, auth={"admin_key": ADMIN_KEY}),
                     upstream_transport=fleet.transport())  # fmt: skip
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    async with app.router.lifespan_context(app), client:
        error = openai_error(await client.post("/admin/experts/a/wake", headers=ADMIN), 400)
        assert error["code"] == "tiering_disabled"
        body = (await client.get("/admin/experts", headers=ADMIN)).json()
        assert body["devices"] == {}
        assert "tiering" not in body["data"][0]


async def test_tier_metrics_are_exported_after_activity(make_gateway: Build) -> None:
    gw = await make_gateway([rep("a"), rep("b")], budget=10)
    for m in ("a", "b", "a"):
        assert content_of(await gw.client.post("/v1/chat/completions", json=chat(m)))
    text = (await gw.client.get("/metrics")).text
    assert 'coe_expert_tier{expert="a",tier="hot"} 1.0' in text
    assert 'coe_expert_tier{expert="b",tier="warm"} 1.0' in text
    assert 'coe_tier_wake_seconds_count{expert="a",from_tier="cold"} 1.0' in text
    assert 'coe_tier_wake_seconds_count{expert="a",from_tier="warm"} 1.0' in text
    assert 'coe_tier_switches_total{expert="a"} 2.0' in text
    assert 'coe_tier_switches_total{expert="b"} 1.0' in text
    assert 'coe_tier_queue_wait_seconds_count{expert="a"} 2.0' in text
    assert 'coe_gpu_budget_used_gb{device="gpu0"} 8.0' in text
    assert 'coe_gpu_budget_gb{device="gpu0"} 10.0' in text
