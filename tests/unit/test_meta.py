"""Discovery and operations: models, health, readiness, metrics and the routing dry run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeVLLM
from tests.unit.conftest import CODE, GENERAL, app_of, catalog_dict, openai_error

CHAT = "/v1/chat/completions"
ADMIN = {"authorization": "Bearer sk-admin"}


def chat(content: str, model: str = "coe", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float | None:
    """One sample from ``GET /metrics`` (None when no sample has these labels)."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def get_json(client: httpx.AsyncClient, path: str, status: int = 200) -> dict[str, Any]:
    """``GET path``: it must answer ``status``; its JSON body."""
    resp = await client.get(path)
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


# --- /v1/models --------------------------------------------------------------------------------


async def test_models_lists_the_virtual_model_then_every_expert(
    client: httpx.AsyncClient,
) -> None:
    body = await get_json(client, "/v1/models", 200)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["coe", "general", "code"]
    for card in body["data"]:
        assert card["object"] == "model"
        assert card["owned_by"] == "coe-router"
        assert isinstance(card["created"], int)
    coe, general, code = body["data"]
    assert coe["coe"]["kind"] == "virtual"
    assert coe["coe"]["router"] == "keyword"
    assert general["coe"] == {
        "kind": "expert",
        "served_model_name": "small-general",
        "categories": ["general", "writing"],
        "cost": 1.0,
        "memory_gb": 1.0,
        "live": True,
    }
    assert code["coe"]["kind"] == "expert"
    assert code["coe"]["served_model_name"] == "small-coder"
    assert code["coe"]["cost"] == 3.0


async def test_models_shows_an_expert_without_live_replicas(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "down"
    await app_of(client).state.coe.pool.check_all()
    cards = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    assert cards["code"]["coe"]["live"] is False
    assert cards["general"]["coe"]["live"] is True


# --- /health and /ready ------------------------------------------------------------------------


async def test_health_answers_ok(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    for url in [*GENERAL, *CODE]:
        fake.of(url).mode = "down"
    await app_of(client).state.coe.pool.check_all()
    # Liveness is about the gateway process, not its experts.
    resp = await client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


async def test_ready_when_every_required_expert_has_a_live_replica(
    make_client: Callable[..., Any],
) -> None:
    client = await make_client(auth={"admin_key": "sk-admin"})
    resp = await client.get("/ready", headers=ADMIN)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ready"
    assert set(body["experts"]) == {"general", "code"}
    assert body["experts"]["general"]["live"] is True
    assert body["experts"]["general"]["required"] is True
    assert [r["state"] for r in body["experts"]["general"]["replicas"]] == ["up", "up"]


async def test_ready_with_one_replica_of_two_down(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(auth={"admin_key": "sk-admin"})
    fake.of(GENERAL[0]).mode = "down"
    await app_of(client).state.coe.pool.check_all()
    resp = await client.get("/ready", headers=ADMIN)
    assert resp.status_code == 200
    replicas = resp.json()["experts"]["general"]["replicas"]
    assert [r["state"] for r in replicas] == ["down", "up"]
    assert "/health failed" in replicas[0]["detail"]


async def test_not_ready_when_a_required_expert_is_down(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    for url in GENERAL:
        fake.of(url).mode = "down"
    app = app_of(client)
    await app.state.coe.pool.check_all()
    resp = await client.get("/ready")
    error = openai_error(resp, 503)
    assert error["type"] == "service_unavailable"
    assert error["code"] == "not_ready"
    assert "general" in error["message"]
    assert "code" not in error["message"]
    # Without the admin key: ready or not per expert, no replica URLs or detail.
    assert resp.json()["experts"] == {"general": "not ready", "code": "ready"}
    # Back up after the next health round.
    for url in GENERAL:
        fake.of(url).mode = "ok"
    await app.state.coe.pool.check_all()
    assert (await client.get("/ready")).status_code == 200


async def test_an_optional_expert_does_not_hold_readiness(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    catalog = catalog_dict()
    catalog["experts"][1]["required"] = False
    client = await make_client(catalog=catalog, auth={"admin_key": "sk-admin"})
    fake.of(CODE[0]).mode = "down"
    await app_of(client).state.coe.pool.check_all()
    resp = await client.get("/ready", headers=ADMIN)
    assert resp.status_code == 200
    assert resp.json()["experts"]["code"] == {
        "live": False,
        "required": False,
        "replicas": [
            {
                "url": CODE[0],
                "state": "down",
                "breaker": "closed",
                "outstanding": 0,
                "detail": "/health failed: ConnectError",
            }
        ],
    }


async def test_replicas_found_down_at_startup_are_not_ready(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    for url in GENERAL:
        fake.of(url).mode = "down"
    client = await make_client()  # the lifespan runs a health round before serving
    assert (await client.get("/ready")).status_code == 503


# --- /metrics ----------------------------------------------------------------------------------


async def test_metrics_after_a_routed_request(client: httpx.AsyncClient) -> None:
    assert (await client.post(CHAT, json=chat("a poem about the sea"))).status_code == 200
    resp = await client.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    labels = {"model": "coe", "expert": "general", "strategy": "keyword", "status": "200"}
    assert await metric(client, "coe_requests_total", **labels) == 1
    assert await metric(client, "coe_routing_latency_seconds_count", strategy="keyword") == 1
    assert await metric(client, "coe_request_latency_seconds_count", expert="general") == 1
    assert await metric(client, "coe_in_flight_requests", expert="general") == 0
    # Nothing streamed, nothing failed.
    assert await metric(client, "coe_time_to_first_token_seconds_count") is None
    assert await metric(client, "coe_upstream_errors_total") is None


async def test_metrics_label_direct_requests_by_the_model_asked_for(
    client: httpx.AsyncClient,
) -> None:
    for model in ("code", "small-coder"):
        await client.post(CHAT, json=chat("hi", model=model))
    for model in ("code", "small-coder"):
        labels = {"model": model, "expert": "code", "strategy": "direct", "status": "200"}
        assert await metric(client, "coe_requests_total", **labels) == 1
    assert await metric(client, "coe_routing_latency_seconds_count", strategy="direct") == 2


async def test_metrics_time_to_first_token_after_a_stream(client: httpx.AsyncClient) -> None:
    resp = await client.post(CHAT, json=chat("python bug", stream=True))
    assert resp.status_code == 200
    assert await metric(client, "coe_time_to_first_token_seconds_count", expert="code") == 1
    labels = {"model": "coe", "expert": "code", "strategy": "keyword", "status": "200"}
    assert await metric(client, "coe_requests_total", **labels) == 1
    assert await metric(client, "coe_request_latency_seconds_count", expert="code") == 1
    assert await metric(client, "coe_in_flight_requests", expert="code") == 0


async def test_metrics_count_upstream_failures_by_kind(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    # Named directly: a routed request would fall back to the generalist.
    fake.of(CODE[0]).mode = "down"
    assert (await client.post(CHAT, json=chat("python bug", model="code"))).status_code == 503
    fake.of(CODE[0]).mode = "garbage"
    await app_of(client).state.coe.pool.check_all()  # back up, but sends garbage
    assert (await client.post(CHAT, json=chat("python bug", model="code"))).status_code == 502
    errors = "coe_upstream_errors_total"
    assert await metric(client, errors, expert="code", kind="unavailable") == 1
    assert await metric(client, errors, expert="code", kind="bad_response") == 1
    for status in ("503", "502"):
        labels = {"model": "code", "expert": "code", "status": status}
        assert await metric(client, "coe_requests_total", **labels) == 1
    assert await metric(client, "coe_in_flight_requests", expert="code") == 0


async def test_metrics_replica_up_follows_health_rounds(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    up = "coe_replica_up"
    assert await metric(client, up, expert="code", replica="0") == 1
    fake.of(CODE[0]).mode = "down"
    await app_of(client).state.coe.pool.check_all()
    assert await metric(client, up, expert="code", replica="0") == 0
    assert await metric(client, up, expert="general", replica="0") == 1
    # Replicas are labelled by index: no URL reaches the unauthenticated /metrics.
    text = (await client.get("/metrics")).text
    assert not any(url in text for url in [*CODE, *GENERAL])


async def test_failed_validation_is_not_counted_as_an_expert_request(
    client: httpx.AsyncClient,
) -> None:
    await client.post(CHAT, json={"model": "coe", "messages": []})
    await client.post(CHAT, json=chat("hi", model="nope"))
    assert await metric(client, "coe_requests_total") is None


# --- /v1/route ---------------------------------------------------------------------------------


async def test_route_explains_the_decision_and_generates_nothing(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    resp = await client.post("/v1/route", json=chat("write a poem about a python function bug"))
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "coe.route"
    assert body["model"] == "coe"
    assert body["expert"] == "code"
    assert body["category"] == "code"
    assert body["strategy"] == "keyword"
    assert 0 < body["confidence"] < 1
    # "poem": one writing hit of four, on the confidence scale.
    assert body["alternatives"] == [{"expert": "general", "score": 0.25 * 0.5}]
    assert "code" in body["reason"]
    assert body["routing_ms"] >= 0
    assert fake.received == []
    assert await metric(client, "coe_requests_total") is None


async def test_route_defaults_to_the_virtual_model(client: httpx.AsyncClient) -> None:
    body = (
        await client.post("/v1/route", json={"messages": [{"role": "user", "content": "hi"}]})
    ).json()
    assert body["model"] == "coe"
    assert body["expert"] == "general"
    assert body["category"] == "general"
    assert body["confidence"] == 0.0
    assert body["alternatives"] == []


async def test_route_with_an_expert_name_is_direct(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    body = (await client.post("/v1/route", json=chat("a poem", model="small-coder"))).json()
    assert body["expert"] == "code"
    assert body["strategy"] == "direct"
    assert body["confidence"] == 1.0
    assert body["category"] is None
    assert fake.received == []


async def test_route_skips_an_expert_that_is_down(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "down"
    await app_of(client).state.coe.pool.check_all()
    body = (await client.post("/v1/route", json=chat("python"))).json()
    # The dry run says where the request would go: the generalist stands in.
    assert body["expert"] == "general"
    assert body["fallback"] == {"from": "code", "reason": "no_live_replica"}
    assert body["category"] == "code"
