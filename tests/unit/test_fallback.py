"""Cross-expert fallback through the gateway: a routed request whose expert cannot answer
before the first byte is answered by the next candidate, at most one hop by default."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from tests.fakes import FakeVLLM
from tests.unit.conftest import CODE, GENERAL, app_of, catalog_dict, openai_error

#: /ready shows per-replica detail to the admin key only.
ADMIN_AUTH = {"admin_key": "sk-admin"}
ADMIN = {"authorization": "Bearer sk-admin"}

CHAT = "/v1/chat/completions"
CODING = "fix this python function"  # the keyword router picks "code"
MATH = ["http://math-a:8000"]


def chat(content: str = CODING, model: str = "coe", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def three_experts(**virtual_model: Any) -> dict[str, Any]:
    """general (the generalist), code and math; "python equation" routes to code with
    math as the alternative."""
    catalog = catalog_dict()
    catalog["experts"].append(
        {"name": "math", "served_model_name": "small-math", "categories": ["math"],
         "replicas": MATH}
    )  # fmt: skip
    catalog["keywords"]["math"] = ["equation"]
    catalog["virtual_models"][0].update(virtual_model)
    return catalog


def stream_events(resp: httpx.Response) -> list[Any]:
    events = resp.text.removesuffix("\n\n").split("\n\n")
    assert events[-1] == "data: [DONE]", resp.text
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


async def test_a_down_expert_falls_back_to_the_generalist(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "down"
    # First: the replica is thought up, the call is refused (before any byte), it moves.
    first = await client.post(CHAT, json=chat())
    assert first.status_code == 200, first.text
    assert first.headers["x-coe-fallback"] == "code->general"
    assert first.headers["x-coe-expert"] == "general"
    coe = first.json()["coe"]
    assert coe["expert"] == "general"
    assert coe["category"] == "code"
    assert coe["fallback"] == {"from": "code", "reason": "unavailable"}
    assert first.json()["model"] == "small-general"  # the stand-in's own model name
    # Then: the replica is known down, so code is not even tried.
    tried = len(fake.received)
    second = await client.post(CHAT, json=chat())
    assert second.json()["coe"]["fallback"] == {"from": "code", "reason": "no_live_replica"}
    assert len(fake.received) == tried + 1
    assert len(fake.bodies_for(CODE[0])) == 0  # refused at connect: no body ever arrived
    text = (await client.get("/metrics")).text
    assert 'coe_fallbacks_total{reason="no_live_replica",source="code",target="general"} 1.0' in (
        text
    )


async def test_a_stream_falls_back_before_its_first_byte(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "status"  # a 500 before the stream began
    resp = await client.post(CHAT, json=chat(stream=True))
    assert resp.status_code == 200
    assert resp.headers["x-coe-fallback"] == "code->general"
    assert resp.headers["x-coe-expert"] == "general"
    events = stream_events(resp)
    assert all("error" not in e for e in events)
    assert {e["model"] for e in events} == {"small-general"}


async def test_a_stream_broken_after_its_first_byte_does_not_move(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "midstream"
    resp = await client.post(CHAT, json=chat(stream=True))
    assert "x-coe-fallback" not in resp.headers
    assert resp.headers["x-coe-expert"] == "code"
    assert "error" in stream_events(resp)[-1]  # in-band, then [DONE]
    assert fake.bodies_for(GENERAL[0]) == fake.bodies_for(GENERAL[1]) == []


async def test_a_request_naming_an_expert_never_moves(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode = "down"
    error = openai_error(await client.post(CHAT, json=chat(model="code")), 503)
    assert error["code"] == "expert_unavailable"
    assert fake.bodies_for(GENERAL[0]) == fake.bodies_for(GENERAL[1]) == []


async def test_the_experts_own_4xx_is_not_fallen_back(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(CODE[0]).mode, fake.of(CODE[0]).status = "status", 400
    resp = await client.post(CHAT, json=chat())
    assert openai_error(resp, 400)["param"] == "max_tokens"
    assert "x-coe-fallback" not in resp.headers


async def test_a_slow_non_streamed_generation_is_not_sent_elsewhere(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    fake.honour_timeouts = True
    client = await make_client(upstream={"read_timeout_s": 0.05}, auth=ADMIN_AUTH)
    fake.of(CODE[0]).delay_s = 5
    assert openai_error(await client.post(CHAT, json=chat()), 504)["code"] == "upstream_timeout"
    assert len(fake.received) == 1  # code had it; nobody else was asked
    # The slow replica is neither down nor shut out by its breaker.
    assert (await client.get("/ready", headers=ADMIN)).json()["experts"]["code"]["live"] is True


async def test_fallback_off_for_a_virtual_model_in_the_catalog(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    catalog = catalog_dict()
    catalog["virtual_models"][0]["fallback_hops"] = 0
    client = await make_client(catalog=catalog)
    fake.of(CODE[0]).mode = "down"
    openai_error(await client.post(CHAT, json=chat()), 503)
    openai_error(await client.post(CHAT, json=chat()), 503)
    assert fake.received == []
    route = (await client.post("/v1/route", json=chat())).json()
    assert route["expert"] == "code"  # with fallback off, that is where it would go
    assert route.get("fallback") is None


async def test_fallback_off_by_setting(make_client: Callable[..., Any], fake: FakeVLLM) -> None:
    client = await make_client(upstream={"fallback_hops": 0})
    fake.of(CODE[0]).mode = "down"
    openai_error(await client.post(CHAT, json=chat()), 503)


async def test_at_most_one_hop_by_default(make_client: Callable[..., Any], fake: FakeVLLM) -> None:
    client = await make_client(catalog=three_experts())
    fake.of(CODE[0]).mode = "status"
    fake.of(MATH[0]).mode = "status"
    resp = await client.post(CHAT, json=chat("python equation"))
    assert resp.status_code == 502, resp.text
    assert len(fake.bodies_for(MATH[0])) == 1  # the one hop: the decision's alternative
    assert fake.bodies_for(GENERAL[0]) == fake.bodies_for(GENERAL[1]) == []


async def test_two_hops_reach_the_generalist(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(catalog=three_experts(fallback_hops=2))
    fake.of(CODE[0]).mode = "status"
    fake.of(MATH[0]).mode = "status"
    resp = await client.post(CHAT, json=chat("python equation"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-fallback"] == "code->general"
    assert resp.json()["coe"]["fallback"] == {"from": "code", "reason": "error"}


async def test_an_alternative_with_no_live_replica_is_skipped_without_a_hop(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(catalog=three_experts())
    fake.of(CODE[0]).mode = fake.of(MATH[0]).mode = "down"
    await app_of(client).state.coe.pool.check_all()
    resp = await client.post(CHAT, json=chat("python equation"))
    assert resp.headers["x-coe-fallback"] == "code->general"
    route = (await client.post("/v1/route", json=chat("python equation"))).json()
    assert (route["expert"], route["fallback"]["from"]) == ("general", "code")


async def test_an_open_breaker_makes_the_expert_not_live(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    client = await make_client(
        upstream={"breaker_failures": 1, "breaker_reset_s": 60}, auth=ADMIN_AUTH
    )
    fake.of(CODE[0]).mode = "status"
    assert (await client.post(CHAT, json=chat())).headers["x-coe-fallback"] == "code->general"
    ready = (await client.get("/ready", headers=ADMIN)).json()["experts"]["code"]
    assert ready["live"] is False
    assert ready["replicas"][0]["breaker"] == "open"
    route = (await client.post("/v1/route", json=chat())).json()
    assert route["expert"] == "general"
    models = (await client.get("/v1/models")).json()["data"]
    assert next(m for m in models if m["id"] == "code")["coe"]["live"] is False


async def test_a_fallback_answer_is_not_cached_as_the_routed_experts(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    catalog = catalog_dict()
    catalog["virtual_models"][0]["cache_ttl_s"] = 60
    client = await make_client(catalog=catalog)
    fake.of(CODE[0]).mode = "down"
    assert (await client.post(CHAT, json=chat())).headers["x-coe-fallback"] == "code->general"
    fake.of(CODE[0]).mode = "ok"
    await app_of(client).state.coe.pool.check_all()
    again = await client.post(CHAT, json=chat())
    assert again.headers["x-coe-cache"] == "miss"
    assert again.headers["x-coe-expert"] == "code"
