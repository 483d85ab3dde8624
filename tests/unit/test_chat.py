"""Chat completions through the gateway: routing, forwarding, the ``coe`` extension."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.fakes import FakeVLLM
from tests.unit.conftest import CODE, GENERAL


def chat(content: str, model: str = "coe", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_coding_prompt_is_routed_to_the_code_expert(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    resp = await client.post("/v1/chat/completions", json=chat("fix this python function"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-expert"] == "code"
    assert resp.headers["x-coe-category"] == "code"
    assert resp.headers["x-coe-strategy"] == "keyword"
    assert 0 < float(resp.headers["x-coe-confidence"]) <= 1
    body = resp.json()
    assert body["coe"]["expert"] == "code"
    assert body["coe"]["virtual_model"] == "coe"
    assert body["choices"][0]["message"]["content"] == "hello"
    assert fake.bodies_for(CODE[0])[0]["model"] == "small-coder"


async def test_unmatched_prompt_goes_to_the_generalist(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/chat/completions", json=chat("hi there"))
    assert resp.status_code == 200
    assert resp.headers["x-coe-expert"] == "general"
    assert float(resp.headers["x-coe-confidence"]) == 0.0


async def test_unused_fields_reach_the_expert_untouched(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    extra = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"},
        "stop": ["\n\n"], "n": 1, "seed": 7, "logprobs": True, "top_logprobs": 2,
        "vendor_field": {"nested": [1, 2.5, None]},
    }  # fmt: skip
    resp = await client.post(
        "/v1/chat/completions", json=chat("a poem", **extra, coe={"conversation_id": "c-1"})
    )
    assert resp.status_code == 200
    sent = fake.received[-1].body
    for key, value in extra.items():
        assert sent[key] == value
    assert "coe" not in sent
    assert sent["model"] == "small-general"


async def test_expert_name_and_served_name_go_straight_to_the_expert(
    client: httpx.AsyncClient,
) -> None:
    for model in ("code", "small-coder"):
        resp = await client.post("/v1/chat/completions", json=chat("write a poem", model=model))
        assert resp.status_code == 200
        assert resp.headers["x-coe-expert"] == "code"
        assert resp.headers["x-coe-strategy"] == "direct"


async def test_streaming_passes_chunks_through_and_ends_with_done(
    client: httpx.AsyncClient,
) -> None:
    resp = await client.post("/v1/chat/completions", json=chat("python bug", stream=True))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-coe-expert"] == "code"
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e[len("data: ") :])["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == "hello0 hello1 hello2 "


async def test_least_outstanding_balances_across_replicas(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.of(GENERAL[0]).delay_s = fake.of(GENERAL[1]).delay_s = 0.05
    import asyncio

    await asyncio.gather(*(client.post("/v1/chat/completions", json=chat("hi")) for _ in range(6)))
    assert len(fake.bodies_for(GENERAL[0])) == 3
    assert len(fake.bodies_for(GENERAL[1])) == 3


@pytest.mark.parametrize(
    ("coe", "param"),
    [({"unknown": 1}, "coe.unknown"), ({"k": 0}, "coe.k"), ({"strategy": "dance"}, "coe.strategy")],
)
async def test_bad_coe_extension_is_a_400_naming_the_field(
    client: httpx.AsyncClient, fake: FakeVLLM, coe: dict[str, object], param: str
) -> None:
    resp = await client.post("/v1/chat/completions", json=chat("hi", coe=coe))
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param
    assert fake.received == []
