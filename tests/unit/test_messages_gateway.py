"""``/v1/messages`` through the gateway, driven by the official ``anthropic`` client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from coe_router.anthropic.count import estimate
from coe_router.anthropic.types import CountTokensRequest
from tests.conversation import string_tool
from tests.unit.conftest import CODE, GENERAL, catalog_dict
from tests.unit.tool_fakes import ARGUMENTS, TOKENIZED, ToolCallingVLLM

pytestmark = pytest.mark.unit

WEATHER = string_tool("get_weather", "Weather in a city", "city", required=False)


@pytest.fixture
def fake() -> ToolCallingVLLM:
    return ToolCallingVLLM()


def claude(client: httpx.AsyncClient, api_key: str = "k") -> anthropic.AsyncAnthropic:
    """The official client, in-process against the gateway app."""
    app = client.app  # type: ignore[attr-defined]
    return anthropic.AsyncAnthropic(
        api_key=api_key, base_url="http://gateway", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
    )  # fmt: skip


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def stream_message(
    client: httpx.AsyncClient, **create: Any
) -> tuple[str, anthropic.types.Message, httpx2.Headers]:
    """Stream a message of ``coe`` through the official client: its text, its final
    message and the response headers."""
    async with claude(client).messages.stream(model="coe", **create) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
        headers = stream.response.headers
    return text, final, headers


async def test_a_message_is_routed_and_answered(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    raw = await claude(client).messages.with_raw_response.create(
        model="coe", max_tokens=32, system="Be brief.", stop_sequences=["END"],
        extra_body={"temperature": 0.3},  # this client version has no temperature argument
        messages=user("fix this python function"),
    )  # fmt: skip
    assert raw.headers["x-coe-expert"] == "code"
    assert raw.headers["x-coe-strategy"] == "keyword"
    assert raw.headers["x-coe-category"] == "code"
    assert raw.headers["x-coe-affinity"] == "new"
    message = await raw.parse()
    assert message.id.startswith("msg_")
    assert message.model == "coe"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "hello")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 1)
    # What reached the coder: OpenAI's chat API, with the expert's own model name.
    (sent,) = fake.bodies_for(CODE[0])
    assert sent["model"] == "small-coder"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "fix this python function"},
    ]
    assert (sent["max_tokens"], sent["stop"], sent["temperature"]) == (32, ["END"], 0.3)
    # Our extension rides along, as on chat completions.
    assert json.loads(raw.http_response.text)["coe"]["expert"] == "code"


async def test_a_streamed_message_is_anthropic_s_event_stream(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    text, final, headers = await stream_message(
        client, max_tokens=32, messages=user("write a poem")
    )
    assert text == "hello0 hello1 hello2 "
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3  # the fake sends no usage chunk: counted chunks
    assert headers["x-coe-expert"] == "general"
    assert headers["content-type"].startswith("text/event-stream")
    (sent,) = [b for url in GENERAL for b in fake.bodies_for(url)]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_a_tool_call_comes_back_as_tool_use(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    message = await claude(client).messages.create(
        model="coe", max_tokens=64, tools=[WEATHER], tool_choice={"type": "auto"},  # type: ignore[list-item]
        messages=user("What's the weather in Paris?"),
    )  # fmt: skip
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert (block.name, block.input) == ("get_weather", ARGUMENTS)
    sent = fake.received[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "auto"


async def test_a_streamed_tool_call_is_accumulated_by_the_client(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    _, final, _ = await stream_message(
        client, max_tokens=64, tools=[WEATHER], messages=user("What's the weather in Paris?")
    )
    (block,) = final.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.input == ARGUMENTS
    assert final.stop_reason == "tool_use"


async def test_the_tool_result_goes_back_to_the_expert_that_made_the_call(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    c = claude(client)
    first = await c.messages.with_raw_response.create(
        model="coe", max_tokens=64, tools=[WEATHER], messages=user("What's the weather in Paris?"),  # type: ignore[list-item]
    )  # fmt: skip
    assert first.headers["x-coe-expert"] == "general"
    called = await first.parse()
    call = called.content[0]
    assert isinstance(call, anthropic.types.ToolUseBlock)
    # The result turn also asks for code: alone, the router would move it to the coder.
    turn = [
        *user("What's the weather in Paris?"),
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in called.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"},
            {"type": "text", "text": "then write a python function to fix the bug"}]},
    ]  # fmt: skip
    second = await c.messages.with_raw_response.create(
        model="coe", max_tokens=64, tools=[WEATHER], messages=turn,  # type: ignore[arg-type,list-item]
    )  # fmt: skip
    assert second.headers["x-coe-expert"] == "general"
    assert second.headers["x-coe-affinity"] == "tool_loop"
    sent = fake.received[-1]
    assert sent.url.startswith(tuple(GENERAL))
    assert sent.body["messages"][2] == {"role": "tool", "tool_call_id": call.id,
                                        "content": "18C and sunny"}  # fmt: skip
    # Past the loop (the expert answered), the same request moves as the router says.
    after = [*turn, {"role": "assistant", "content": "It is sunny."},
             *user("write a python function to fix the bug")]  # fmt: skip
    third = await c.messages.with_raw_response.create(
        model="coe",
        max_tokens=64,
        messages=after,  # type: ignore[arg-type]
    )
    assert third.headers["x-coe-expert"] == "code"
    assert third.headers["x-coe-affinity"] == "moved"


# --- errors in Anthropic's shape ----------------------------------------------------------------


async def test_a_bad_body_is_an_anthropic_invalid_request_error(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/messages", json={"model": "coe", "messages": user("hi")})
    assert resp.status_code == 400
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        await claude(client).messages.create(
            model="coe", max_tokens=8, messages=[{"role": "user", "content": [  # type: ignore[list-item]
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "x"}}]}],
        )  # fmt: skip


async def test_not_json_and_unknown_model_and_unknown_route(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/messages", content=b"{oops")
    assert (resp.status_code, resp.json()["error"]["type"]) == (400, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError) as info:
        await claude(client).messages.create(model="nope", max_tokens=8, messages=user("hi"))  # type: ignore[arg-type]
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    resp = await client.post("/v1/messages/batches", json={})
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "not_found_error"
    # Other routes keep OpenAI's shape.
    resp = await client.post("/v1/chat/completions", json={"model": "coe"})
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "type" not in resp.json() or resp.json().get("type") != "error"


async def test_api_keys_come_as_x_api_key_or_bearer(
    make_client: Callable[..., Any],
) -> None:
    client = await make_client(auth={"api_keys": ["sk-good"]})
    missing = await client.post("/v1/messages", json={"model": "coe", "max_tokens": 4,
                                                      "messages": user("hi")})  # fmt: skip
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in missing.json()["error"]["message"]
    body = {"model": "coe", "max_tokens": 4, "messages": user("hi")}
    by_header = await client.post("/v1/messages", json=body, headers={"x-api-key": "sk-good"})
    assert by_header.status_code == 200, by_header.text
    bearer = await client.post("/v1/messages", json=body,
                               headers={"authorization": "Bearer sk-good"})  # fmt: skip
    assert bearer.status_code == 200
    with pytest.raises(anthropic.AuthenticationError):
        await claude(client, api_key="sk-bad").messages.create(
            model="coe", max_tokens=4, messages=user("hi")
        )
    # x-api-key also works on the OpenAI routes (one key, two client styles).
    chat = await client.post("/v1/chat/completions", headers={"x-api-key": "sk-good"},
                             json={"model": "coe", "messages": user("hi")})  # fmt: skip
    assert chat.status_code == 200


async def test_a_down_expert_falls_back_and_naming_it_is_an_overloaded_error(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    fake.of(CODE[0]).mode = "down"
    # Routed: the generalist stands in before the first byte, as on chat completions.
    raw = await claude(client).messages.with_raw_response.create(
        model="coe", max_tokens=8, messages=user("fix this python bug")
    )
    assert raw.headers["x-coe-fallback"] == "code->general"
    assert raw.headers["x-coe-expert"] == "general"
    assert (await raw.parse()).content
    # Named: nobody stands in for an expert the client asked for.
    with pytest.raises(anthropic.InternalServerError) as info:
        await claude(client).messages.create(
            model="code", max_tokens=8, messages=user("fix this python bug")
        )
    assert info.value.status_code == 503
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_an_expert_failing_mid_stream_ends_with_an_error_event(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    fake.of(CODE[0]).mode = "midstream"
    resp = await client.post(
        "/v1/messages",
        json={
            "model": "coe",
            "max_tokens": 8,
            "stream": True,
            "messages": user("fix this python bug"),
        },
    )
    assert resp.status_code == 200  # the stream had started
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[0].startswith("event: message_start")
    kind, data = events[-1].split("\n")
    assert kind == "event: error"
    error = json.loads(data.removeprefix("data: "))
    assert error["type"] == "error"
    assert error["error"]["type"] in ("api_error", "overloaded_error")
    assert "message_stop" not in resp.text
    metrics = (await client.get("/metrics")).text
    (counted,) = [line for line in metrics.splitlines() if line.startswith("coe_requests_total")]
    assert 'expert="code"' in counted
    assert 'status="200"' not in counted


async def test_synthesis_answers_as_one_message(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    raw = await claude(client).messages.with_raw_response.create(
        model="coe", max_tokens=16, messages=user("write a poem"),
        extra_body={"coe": {"synthesis": True, "k": 2}},
    )  # fmt: skip
    assert raw.headers["x-coe-strategy"] == "synthesis-synthesize"
    assert set(raw.headers["x-coe-experts"].split(",")) == {"general", "code"}
    message = await raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text  # the aggregator's answer
    assert message.usage.output_tokens > 0
    coe = json.loads(raw.http_response.text)["coe"]
    assert {e["expert"] for e in coe["experts"]} == {"general", "code"}
    # Every panel member and the aggregator got the translated (OpenAI) request.
    assert len(fake.received) == 3
    assert all(r.body["max_tokens"] == 16 for r in fake.received[:2])


async def test_synthesis_streams_as_anthropic_events(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    text, final, headers = await stream_message(
        client, max_tokens=16, messages=user("write a poem"),
        extra_body={"coe": {"synthesis": True, "k": 2}},
    )  # fmt: skip
    assert headers["x-coe-strategy"] == "synthesis-synthesize"
    assert text
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    metrics = (await client.get("/metrics")).text
    (counted,) = [line for line in metrics.splitlines() if line.startswith("coe_requests_total")]
    assert 'status="200"' in counted
    assert 'strategy="synthesis-synthesize"' in counted


async def test_messages_count_against_token_limits_and_get_anthropic_429s(
    make_client: Callable[..., Any],
) -> None:
    client = await make_client(rate_limits={"tokens_per_min": 10})
    settle = client.app.state.coe.shared.background.drain  # type: ignore[attr-defined]
    body = {"model": "coe", "max_tokens": 8, "messages": user("write a poem")}
    key = {"x-api-key": "k"}  # the anthropic client below sends the same key as a bearer
    # Streams are charged too: 3 chunks each (the fake sends no usage), 0 -> 3 -> 6 -> 9.
    for _ in range(3):
        assert (
            await client.post("/v1/messages", json={**body, "stream": True}, headers=key)
        ).status_code == 200
        await settle()
    assert (await client.post("/v1/messages", json=body, headers=key)).status_code == 200
    await settle()  # 9 -> 15
    refused = await client.post("/v1/messages", json=body, headers=key)
    assert refused.status_code == 429
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "retry-after" in refused.headers
    with pytest.raises(anthropic.RateLimitError):
        await claude(client).messages.create(**body)


# --- cache ------------------------------------------------------------------------------------


async def test_a_cached_message_replays_anthropic_events_not_chat_chunks(
    make_client: Callable[..., Any], fake: ToolCallingVLLM
) -> None:
    http = await make_client(catalog=catalog_dict(cache_ttl_s=60))
    body = {"model": "coe", "max_tokens": 8, "stream": True, "messages": user("write a poem")}
    first = await http.post("/v1/messages", json=body)
    await http.app.state.coe.shared.background.drain()  # type: ignore[attr-defined]
    second = await http.post("/v1/messages", json=body)
    assert (first.headers["x-coe-cache"], second.headers["x-coe-cache"]) == ("miss", "hit")
    assert second.text == first.text
    assert second.text.startswith("event: message_start")
    # The same JSON is a valid chat request too: it must not get the Anthropic answer.
    chat = await http.post("/v1/chat/completions", json={**body, "stream": False})
    assert chat.headers["x-coe-cache"] == "miss"
    assert chat.json()["object"] == "chat.completion"
    assert len([b for url in GENERAL for b in fake.bodies_for(url)]) == 2


# --- count_tokens -----------------------------------------------------------------------------


async def test_count_tokens_asks_the_awake_expert(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    raw = await claude(client).messages.with_raw_response.count_tokens(
        model="coe", system="Be brief.", tools=[WEATHER],  # type: ignore[list-item]
        messages=user("fix this python function"),
    )  # fmt: skip
    assert (await raw.parse()).input_tokens == TOKENIZED
    assert json.loads(raw.http_response.text)["approximate"] is False
    assert raw.headers["x-coe-token-count"] == "exact"
    assert raw.headers["x-coe-expert"] == "code"
    (asked,) = fake.tokenized
    assert asked["model"] == "small-coder"
    assert asked["messages"][0] == {"role": "system", "content": "Be brief."}
    assert asked["tools"][0]["function"]["name"] == "get_weather"
    assert asked["add_generation_prompt"] is True
    assert fake.received == []  # nothing was generated


async def test_count_tokens_estimates_when_the_expert_cannot_count(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    fake.of(CODE[0]).mode = "down"
    messages = user("fix this python function")
    resp = await client.post("/v1/messages/count_tokens", json={"model": "coe",
                                                                "messages": messages})  # fmt: skip
    assert resp.status_code == 200
    expected = estimate(CountTokensRequest.model_validate({"model": "coe", "messages": messages}))
    assert resp.json() == {"input_tokens": expected.input_tokens, "approximate": True}
    assert resp.headers["x-coe-token-count"] == "approximate"
