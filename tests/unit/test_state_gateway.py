"""Shared state in the request path, on the in-process store (and on a broken one).

Rate limits (429 + headers), session affinity (sticky / moved / new), the response cache
(JSON and replayed streams), the decision log, and serving on when the store fails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from coe_router.config import Settings
from coe_router.errors import StateUnavailable
from coe_router.gateway import create_app
from coe_router.shared.ratelimit import key_id
from coe_router.state import MemoryStore, StateStore, WindowCounts
from tests.conversation import chat, next_turn, routing, settle, state_of
from tests.fakes import FakeVLLM, Received, chunk
from tests.support import CODE, in_process_client, keyword_catalog
from tests.unit.conftest import openai_error

Build = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def build(fake: FakeVLLM, make_settings: Callable[..., Settings]) -> AsyncIterator[Build]:
    """A gateway over the fake vLLM with settings overrides, an optional store and catalog."""
    async with AsyncExitStack() as stack:

        async def make(
            store: StateStore | None = None,
            catalog: dict[str, Any] | None = None,
            transport: httpx.AsyncBaseTransport | None = None,
            **overrides: Any,
        ) -> httpx.AsyncClient:
            settings = make_settings(catalog, **overrides)
            app = create_app(
                settings, upstream_transport=transport or fake.transport(), state_store=store
            )
            return await stack.enter_async_context(in_process_client(app))

        yield make


def cached_catalog(ttl: float = 60) -> dict[str, Any]:
    return keyword_catalog(cache_ttl_s=ttl)


def sse_payloads(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


# --- rate limits ---


async def test_requests_over_the_limit_get_openai_429_with_headers(build: Build) -> None:
    client = await build(rate_limits={"requests_per_min": 2})
    for left in ("1", "0"):
        ok = await client.post("/v1/chat/completions", json=chat("hi"))
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == left
    refused = await client.post("/v1/chat/completions", json=chat("hi"))
    err = openai_error(refused, 429)
    assert err["type"] == "rate_limit_error"
    assert err["code"] == "rate_limit_exceeded"
    assert "requests per min" in err["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-reset-requests" in refused.headers
    text = (await client.get("/metrics")).text
    assert 'coe_rate_limited_total{limit="requests"} 1.0' in text


async def test_each_api_key_has_its_own_budget_and_overrides(build: Build) -> None:
    client = await build(
        auth={"api_keys": ["sk-a", "sk-b", "sk-vip"]},
        rate_limits={"requests_per_min": 1, "overrides": {key_id("sk-vip"): {}}},
    )

    def post(key: str) -> Awaitable[httpx.Response]:
        return client.post(
            "/v1/chat/completions", json=chat("hi"), headers={"authorization": f"Bearer {key}"}
        )

    assert (await post("sk-a")).status_code == 200
    assert (await post("sk-a")).status_code == 429
    assert (await post("sk-b")).status_code == 200  # another key, another budget
    for _ in range(3):  # the override sets no limit for this key
        resp = await post("sk-vip")
        assert resp.status_code == 200
        assert "x-ratelimit-limit-requests" not in resp.headers


async def test_tokens_from_usage_count_against_the_token_limit(build: Build) -> None:
    client = await build(rate_limits={"tokens_per_min": 10})
    for _ in range(2):  # the fake's usage says 6 tokens each: 0 < 10, then 6 < 10
        assert (await client.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
        await settle(client)
    refused = await client.post("/v1/chat/completions", json=chat("hi"))
    err = openai_error(refused, 429)
    assert "tokens per min" in err["message"]
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"


def usage_transport(fake: FakeVLLM) -> httpx.MockTransport:
    """The fake vLLM, plus vLLM's usage chunk when a stream asks for it."""

    async def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}") if request.url.path != "/health" else {}
        if not (body.get("stream") and (body.get("stream_options") or {}).get("include_usage")):
            return await fake.handle(request)
        fake.received.append(Received(str(request.url), body))
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        events = [
            chunk(body["model"], {"role": "assistant", "content": ""}),
            chunk(body["model"], {"content": "hi"}),
            chunk(body["model"], {}, finish="stop"),
            b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk",
                                    "choices": [], "usage": usage}).encode() + b"\n\n",
            b"data: [DONE]\n\n",
        ]  # fmt: skip
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(events)
        )

    return httpx.MockTransport(handle)


async def test_streams_report_usage_for_token_limits_without_showing_it(
    build: Build, fake: FakeVLLM
) -> None:
    client = await build(rate_limits={"tokens_per_min": 10}, transport=usage_transport(fake))
    resp = await client.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert resp.status_code == 200
    sent = fake.received[-1].body
    assert sent["stream_options"] == {"include_usage": True}  # the gateway asked for it
    payloads = sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    assert not any('"usage"' in p for p in payloads)  # the client did not ask: hidden
    await settle(client)
    again = await client.post(
        "/v1/chat/completions",
        json=chat("hi", stream=True, stream_options={"include_usage": True}),
    )
    assert any('"usage"' in p for p in sse_payloads(again.text))  # asked for: kept
    await settle(client)
    refused = await client.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert refused.status_code == 429  # 7 + 7 tokens >= 10


# --- affinity ---


async def test_a_conversation_stays_on_its_expert_unless_the_router_is_confident(
    build: Build,
) -> None:
    client = await build()
    conversation = [{"role": "system", "content": "be nice"},
                    {"role": "user", "content": "hi there"}]  # fmt: skip
    resp = await client.post("/v1/chat/completions", json=chat(conversation))
    assert routing(resp) == ("general", "new")
    script = [  # (answer, next question, where it goes, why)
        # One code keyword (confidence 0.5 < 0.8): the conversation stays with "general".
        ("hello", "python", ("general", "sticky"), "conversation affinity"),
        # Three code keywords (0.875 >= 0.8): it moves to "code", and stays there.
        ("?", "fix the bug in this python function", ("code", "moved"), ""),
        ("done", "thanks", ("code", "sticky"), ""),
    ]
    for answer, question, expected, reason in script:
        await settle(client)
        conversation = next_turn(conversation, answer, question)
        resp = await client.post("/v1/chat/completions", json=chat(conversation))
        assert routing(resp) == expected, question
        assert reason in resp.json()["coe"]["reason"]


async def test_a_client_conversation_id_names_the_conversation(build: Build) -> None:
    client = await build()
    coe = {"conversation_id": "conv-42"}
    resp = await client.post("/v1/chat/completions", json=chat("python function", coe=coe))
    assert resp.headers["x-coe-affinity"] == "new"
    await settle(client)
    resp = await client.post("/v1/chat/completions", json=chat("a poem please", coe=coe))
    assert routing(resp) == ("code", "sticky")
    other = await client.post("/v1/chat/completions", json=chat("a poem please"))
    assert other.headers["x-coe-affinity"] == "new"


async def test_direct_requests_and_disabled_affinity_have_no_header(build: Build) -> None:
    client = await build()
    direct = await client.post("/v1/chat/completions", json=chat("hi", model="general"))
    assert "x-coe-affinity" not in direct.headers
    off = await build(affinity={"enabled": False})
    resp = await off.post("/v1/chat/completions", json=chat("hi"))
    assert "x-coe-affinity" not in resp.headers


# --- response cache ---


async def test_a_repeated_request_is_answered_from_the_cache(build: Build, fake: FakeVLLM) -> None:
    client = await build(catalog=cached_catalog())
    first = await client.post("/v1/chat/completions", json=chat("fix this python bug"))
    assert first.headers["x-coe-cache"] == "miss"
    await settle(client)
    second = await client.post(
        "/v1/chat/completions", json=chat("fix this python bug", user="someone")
    )
    assert second.status_code == 200
    assert second.headers["x-coe-cache"] == "hit"
    assert second.headers["x-coe-expert"] == "code"
    assert second.json() == first.json()
    assert len(fake.received) == 1
    different = await client.post("/v1/chat/completions", json=chat("fix this python bug!"))
    assert different.headers["x-coe-cache"] == "miss"
    text = (await client.get("/metrics")).text
    assert 'coe_cache_lookups_total{model="coe",result="hit"} 1.0' in text


async def test_a_cached_stream_is_replayed_as_a_stream(build: Build, fake: FakeVLLM) -> None:
    client = await build(catalog=cached_catalog())
    body = chat("write a poem", stream=True)
    first = await client.post("/v1/chat/completions", json=body)
    assert first.headers["x-coe-cache"] == "miss"
    await settle(client)
    # The stream flag is part of the key: a non-streamed request is another entry.
    plain = await client.post("/v1/chat/completions", json=chat("write a poem"))
    assert plain.headers["x-coe-cache"] == "miss"
    again = await client.post("/v1/chat/completions", json=body)
    assert again.headers["x-coe-cache"] == "hit"
    assert again.headers["content-type"].startswith("text/event-stream")
    assert sse_payloads(again.text) == sse_payloads(first.text)
    assert sse_payloads(again.text)[-1] == "[DONE]"
    assert len(fake.received) == 2


async def test_failed_answers_and_uncached_models_are_not_cached(
    build: Build, fake: FakeVLLM
) -> None:
    client = await build(catalog=cached_catalog())
    fake.of(CODE[0]).mode = "status"
    fake.of(CODE[0]).status = 400
    assert (await client.post("/v1/chat/completions", json=chat("python"))).status_code == 400
    await settle(client)
    fake.of(CODE[0]).mode = "ok"
    resp = await client.post("/v1/chat/completions", json=chat("python"))
    assert (resp.status_code, resp.headers["x-coe-cache"]) == (200, "miss")
    direct = await client.post("/v1/chat/completions", json=chat("python", model="code"))
    assert "x-coe-cache" not in direct.headers  # only virtual models with cache_ttl_s


async def test_the_cache_is_per_key_unless_shared(build: Build) -> None:
    keys = {"api_keys": ["sk-a", "sk-b"]}
    for shared, expected in ((False, "miss"), (True, "hit")):
        client = await build(
            catalog=cached_catalog(), auth=keys, cache={"shared_across_keys": shared}
        )
        for key in ("sk-a", "sk-b"):
            resp = await client.post(
                "/v1/chat/completions", json=chat("hi"), headers={"authorization": f"Bearer {key}"}
            )
            await settle(client)
        assert resp.headers["x-coe-cache"] == expected


# --- decision log ---


async def test_routed_decisions_are_logged_when_enabled(build: Build) -> None:
    client = await build(decision_log={"enabled": True, "max_entries": 10})
    await client.post("/v1/chat/completions", json=chat("fix this python function"))
    await client.post("/v1/chat/completions", json=chat("hi", model="general"))  # direct
    await settle(client)
    entries = await state_of(client).shared.store.read("decisions")
    assert len(entries) == 1
    entry = entries[0][1]
    assert entry["prompt"] == "fix this python function"
    assert (entry["expert"], entry["category"], entry["strategy"]) == ("code", "code", "keyword")
    assert (entry["served"], entry["affinity"], entry["model"]) == ("code", "new", "coe")
    assert 0 < float(entry["confidence"]) <= 1
    off = await build()
    await off.post("/v1/chat/completions", json=chat("python"))
    await settle(off)
    assert await state_of(off).shared.store.read("decisions") == []


# --- a failing store ---


class BrokenStore(MemoryStore):
    """Every operation fails, as a Redis that is down does."""

    kind = "broken"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {"get", "set", "hit", "add_tokens", "append", "ping"}:

            async def fail(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                raise StateUnavailable(f"redis {name} failed: connection refused")

            return fail
        return attr


async def test_requests_are_served_when_the_store_fails(
    build: Build, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenStore()
    with caplog.at_level(logging.WARNING, logger="coe_router.state"):
        client = await build(
            store=store,
            catalog=cached_catalog(),
            rate_limits={"requests_per_min": 1},
            decision_log={"enabled": True},
            state={"retry_interval_s": 0},  # every request tries the store, and fails
        )
        for _ in range(5):
            resp = await client.post("/v1/chat/completions", json=chat("fix the python bug"))
            assert resp.status_code == 200  # rate limiting fails open by default
            assert resp.headers["x-coe-expert"] == "code"
            assert resp.headers["x-coe-cache"] == "miss"
            assert "x-coe-affinity" not in resp.headers  # skipped, not guessed
            assert "x-ratelimit-limit-requests" not in resp.headers
        await settle(client)
    assert len(fake.received) == 5
    text = (await client.get("/metrics")).text
    for op in ("rate_limit", "cache_get", "affinity_get", "decision_log"):
        assert f'coe_state_errors_total{{op="{op}"}} 5.0' in text
    failing = [r for r in caplog.records if "state store failing on cache_get" in r.message]
    assert len(failing) == 1  # one line, not one per request


async def test_rate_limiting_can_fail_closed(build: Build) -> None:
    client = await build(
        store=BrokenStore(), rate_limits={"requests_per_min": 5, "on_store_error": "closed"}
    )
    resp = await client.post("/v1/chat/completions", json=chat("hi"))
    err = openai_error(resp, 503)
    assert err["code"] == "state_unavailable"
    assert resp.headers["retry-after"] == "1"


class CountingStore(MemoryStore):
    """Records which store operations the request path used."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    async def hit(self, key: str, now: float, *args: Any, **kwargs: Any) -> WindowCounts:
        self.ops.append("hit")
        return await super().hit(key, now, *args, **kwargs)

    async def get(self, key: str) -> bytes | None:
        self.ops.append("get")
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.ops.append("set")
        await super().set(key, value, ttl_s)

    async def append(self, log: str, entry: Mapping[str, str], max_entries: int) -> str:
        self.ops.append("append")
        return await super().append(log, entry, max_entries)


async def test_the_default_gateway_touches_only_affinity(build: Build) -> None:
    store = CountingStore()
    client = await build(store=store)
    await client.post("/v1/chat/completions", json=chat("hi"))
    await settle(client)
    assert store.ops == ["get", "set"]  # no limits, no cache, no log configured
