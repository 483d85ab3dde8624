"""Multi-expert synthesis through the HTTP API: panel, strategies, failures, keep-alives, limits.

Three experts over fake replicas, each answering its own text (set per replica host), so
the tests can tell who answered what. Every fake call reports usage 5 + 1 = 6 tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
import yaml

from coe_router.config import Settings, SynthesisSettings, TierSettings
from coe_router.gateway import create_app
from coe_router.routing.base import Candidate, RoutingDecision
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica
from tests.fakes import FakeVLLM
from tests.unit.conftest import CODE, GENERAL, app_of, catalog_dict, openai_error

MATH = ["http://math-a:8000"]
REPLICAS = {"general": GENERAL, "code": CODE, "math": MATH}
CALL_USAGE = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
URL = "/v1/chat/completions"


def three_experts(**synth_model: Any) -> dict[str, Any]:
    """The unit catalog plus a math expert, and ``coe-synth`` (synthesis on by config)."""
    catalog = catalog_dict()
    catalog["experts"].append({"name": "math", "served_model_name": "small-math",
                               "categories": ["math"], "replicas": MATH})  # fmt: skip
    catalog["keywords"]["math"] = ["sum", "equation"]
    catalog["virtual_models"].append(
        {"name": "coe-synth", "router": "keyword",
         "synthesis": synth_model or {"k": 3, "strategy": "vote"}}
    )  # fmt: skip
    return catalog


def answers(fake: FakeVLLM, **texts: str) -> None:
    """Make every replica of each named expert answer its text."""
    for expert, text in texts.items():
        for url in REPLICAS[expert]:
            fake.of(url).text = text


def behave(fake: FakeVLLM, experts: list[str], **attrs: Any) -> None:
    for expert in experts:
        for url in REPLICAS[expert]:
            for key, value in attrs.items():
                setattr(fake.of(url), key, value)


def chat(content: str, model: str = "coe", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def synth(content: str, model: str = "coe", *, stream: bool = False, **coe: Any) -> dict[str, Any]:
    return chat(content, model, stream=stream, coe={"synthesis": True, **coe})


async def synthesized(
    client: httpx.AsyncClient, content: str, model: str = "coe", **coe: Any
) -> httpx.Response:
    """A synthesis request (``coe`` extension fields as keywords); it must answer 200."""
    resp = await client.post(URL, json=synth(content, model, **coe))
    assert resp.status_code == 200, resp.text
    return resp


async def asgi_call(
    app: Any, body: dict[str, Any], hang_up: Callable[[list[dict[str, Any]]], Any]
) -> list[dict[str, Any]]:
    """Call the ASGI app directly; the client hangs up once ``await hang_up(sent)`` returns.

    (httpx's ASGITransport collects the whole response first, so it cannot leave early.)
    """
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": json.dumps(body).encode(),
                    "more_body": False}  # fmt: skip
        await hang_up(sent)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "server": ("gateway", 80), "client": ("test", 1),
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


async def until(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def aggregator_calls(fake: FakeVLLM, expert: str) -> list[dict[str, Any]]:
    """The bodies of the aggregation calls (those carrying the panel's answers)."""
    return [
        b for url in REPLICAS[expert] for b in fake.bodies_for(url)
        if "answers from several expert models" in str(b["messages"][-1]["content"])
    ]  # fmt: skip


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body (comments dropped)."""
    return [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]


@pytest.fixture
async def client3(make_client: Callable[..., Any]) -> httpx.AsyncClient:
    c: httpx.AsyncClient = await make_client(catalog=three_experts())
    return c


# --- strategies --------------------------------------------------------------------------


async def test_synthesize_asks_k_experts_and_the_aggregator_merges(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="G says 1", code="C says 2", math="M says 3")
    resp = await synthesized(client3, "python bug", k=3, aggregator="math")
    body = resp.json()
    # The aggregator's own answer is the response (the fake answers the same text).
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "M says 3"}
    assert body["object"] == "chat.completion"
    assert body["model"] == "coe"
    # usage: three panel calls and the aggregator's
    assert body["usage"] == {k: 4 * v for k, v in CALL_USAGE.items()}
    coe = body["coe"]
    assert coe["strategy"] == "synthesis-synthesize"
    assert coe["aggregator"] == coe["expert"] == "math"
    assert [e["expert"] for e in coe["experts"]] == ["code", "general", "math"]
    for e in coe["experts"]:
        assert e["ok"]
        assert e["used"]
        assert e["latency_ms"] >= 0
        assert e["wait_ms"] >= 0
        assert "error" not in e
    assert resp.headers["x-coe-experts"] == "code,general,math"
    assert resp.headers["x-coe-aggregator"] == "math"
    assert resp.headers["x-coe-strategy"] == "synthesis-synthesize"
    assert resp.headers["x-coe-expert"] == "math"
    assert resp.headers["x-coe-experts-used"] == "code,general,math"
    assert resp.headers["x-coe-experts-failed"] == ""
    assert set(dict(p.split("=") for p in resp.headers["x-coe-experts-latency-ms"].split(",")))\
        == {"code", "general", "math"}  # fmt: skip
    # The aggregator saw the conversation and every answer, under its own model name.
    (call,) = aggregator_calls(fake, "math")
    assert call["model"] == "small-math"
    assert call["messages"][0] == {"role": "user", "content": "python bug"}
    prompt = call["messages"][-1]["content"]
    for text in ("C says 2", "G says 1", "M says 3"):
        assert text in prompt
    # Each panel member got the question as the client sent it, without our extension.
    for expert in ("code", "general", "math"):
        first = next(b for u in REPLICAS[expert] for b in fake.bodies_for(u))
        assert first["messages"] == [{"role": "user", "content": "python bug"}]
        assert "coe" not in first
        assert first["stream"] is False


async def test_the_default_aggregator_is_the_routers_top_choice(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="G", code="C", math="M")
    resp = await synthesized(client3, "fix this python function", k=2)
    assert resp.headers["x-coe-aggregator"] == "code"
    assert resp.json()["choices"][0]["message"]["content"] == "C"
    assert len(aggregator_calls(fake, "code")) == 1


async def test_vote_takes_the_majority_of_normalized_answers(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="The answer is 42.", code="41", math="So we get 42")
    resp = await synthesized(client3, "python bug", k=3, strategy="vote")
    headers, body = resp.headers, resp.json()
    # general and math agree on 42 (both scored 0.0: the first in rank order answers)
    assert body["choices"][0]["message"]["content"] == "The answer is 42."
    assert body["coe"]["expert"] == "general"
    used = {e["expert"]: e["used"] for e in body["coe"]["experts"]}
    assert used == {"code": False, "general": True, "math": True}
    assert body["coe"]["aggregator"] is None
    assert body["usage"] == {k: 3 * v for k, v in CALL_USAGE.items()}  # no aggregator call
    assert headers["x-coe-strategy"] == "synthesis-vote"
    assert headers["x-coe-aggregator"] == ""
    assert headers["x-coe-experts-used"] == "general,math"
    assert not aggregator_calls(fake, "general")
    assert not aggregator_calls(fake, "math")


@pytest.mark.parametrize(
    ("prompt", "winner", "text"),
    [
        ("python bug in this equation", "code", "(A)"),  # code: 2 hits, math: 1
        ("sum of this equation in python", "math", "The answer is B"),  # math: 2, code: 1
    ],
)
async def test_a_tied_vote_goes_to_the_higher_router_confidence(
    client3: httpx.AsyncClient, fake: FakeVLLM, prompt: str, winner: str, text: str
) -> None:
    answers(fake, code="(A)", math="The answer is B")
    resp = await synthesized(client3, prompt, k=2, strategy="vote")
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == text
    assert body["coe"]["expert"] == winner == resp.headers["x-coe-expert"]
    assert {e["expert"] for e in body["coe"]["experts"]} == {"code", "math"}


async def test_best_answers_with_the_most_confident_expert(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="G", code="C", math="M")
    resp = await client3.post(URL, json=synth("sum of an equation in python", k=3,
                                               strategy="best"))  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "M"
    assert [e["used"] for e in body["coe"]["experts"]] == [True, False, False]
    assert resp.headers["x-coe-strategy"] == "synthesis-best"


# --- failures ----------------------------------------------------------------------------


async def test_one_expert_down_the_rest_answer_and_it_is_reported(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    answers(fake, general="G", code="C", math="M")
    behave(fake, ["code"], mode="down")
    client = await make_client(catalog=three_experts())
    # code is the router's first choice, so also the default aggregator: someone else merges.
    resp = await synthesized(client, "python bug", k=3)
    body = resp.json()
    by = {e["expert"]: e for e in body["coe"]["experts"]}
    assert by["code"]["ok"] is False
    assert by["code"]["used"] is False
    assert by["code"]["error"] == "No replica of the expert can take the request right now."
    assert by["general"]["ok"]
    assert by["general"]["used"]
    assert by["math"]["ok"]
    assert by["math"]["used"]
    assert body["coe"]["aggregator"] == "general"
    assert body["choices"][0]["message"]["content"] == "G"
    assert body["usage"] == {k: 3 * v for k, v in CALL_USAGE.items()}  # 2 answers + aggregator
    assert resp.headers["x-coe-experts-failed"] == "code"
    assert resp.headers["x-coe-experts-used"] == "general,math"
    (call,) = aggregator_calls(fake, "general")
    assert "Expert 1 (general)" in call["messages"][-1]["content"]
    assert "(code)" not in call["messages"][-1]["content"]


async def test_every_expert_down_is_a_502(
    make_client: Callable[..., Any], fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    behave(fake, ["general", "code", "math"], mode="down")
    client = await make_client(catalog=three_experts())
    resp = await client.post(URL, json=synth("python bug", k=3))
    error = openai_error(resp, 502)
    assert error["type"] == "upstream_error"
    for name in ("code", "general", "math"):
        assert f"{name}: " in caplog.text
    # A streaming client gets the same status: the panel failed before the stream began.
    stream = await client.post(URL, json=synth("python bug", k=3, stream=True))
    openai_error(stream, 502)


async def test_a_slow_expert_is_left_out(make_client: Callable[..., Any], fake: FakeVLLM) -> None:
    answers(fake, general="G", code="C", math="M")
    behave(fake, ["math"], delay_s=5.0)
    client = await make_client(
        catalog=three_experts(), synthesis=SynthesisSettings(expert_timeout_s=0.2)
    )
    started = time.perf_counter()
    resp = await client.post(URL, json=synth("python bug", k=3, strategy="vote"))
    assert time.perf_counter() - started < 2
    assert resp.status_code == 200, resp.text
    by = {e["expert"]: e for e in resp.json()["coe"]["experts"]}
    assert by["math"]["ok"] is False
    assert by["math"]["used"] is False
    assert by["math"]["error"] == "no answer within 0.2 s"
    assert 150 <= by["math"]["latency_ms"] < 2000
    assert by["code"]["ok"]
    assert by["general"]["ok"]
    assert fake.cancelled == 1  # the slow call was abandoned, not left running
    assert resp.headers["x-coe-experts-failed"] == "math"


async def test_every_expert_slow_is_a_504(
    make_client: Callable[..., Any], fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    behave(fake, ["general", "code", "math"], delay_s=5.0)
    client = await make_client(
        catalog=three_experts(), synthesis=SynthesisSettings(expert_timeout_s=0.1)
    )
    resp = await client.post(URL, json=synth("python bug", k=3))
    openai_error(resp, 504)
    assert "no expert of the panel answered in time" in caplog.text


async def test_every_expert_rejecting_the_request_passes_their_4xx_on(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    behave(fake, ["general", "code"], mode="status", status=400)
    client = await make_client()
    resp = await client.post(URL, json=synth("python bug", k=2))
    error = openai_error(resp, 400)
    assert error["message"] == "fake error 400"


# --- streaming ---------------------------------------------------------------------------


def openai_client(client: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="unused", base_url="http://gateway/v1",
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app_of(client))),
    )  # fmt: skip


async def test_streamed_synthesis_through_the_openai_client(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="G", code="C", math="M")
    oai = openai_client(client3)
    stream = await oai.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "python bug"}], stream=True,
        stream_options={"include_usage": True},
        extra_body={"coe": {"synthesis": True, "k": 3, "aggregator": "math"}},
    )  # fmt: skip
    text, finish, usage, coe = "", None, None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
        coe = (chunk.model_extra or {}).get("coe") or coe
    await oai.close()
    assert text == "M0 M1 M2 "  # the aggregator's tokens, as it streamed them
    assert finish == "stop"
    assert usage is not None
    assert usage.total_tokens == 3 * 6
    assert coe is not None
    assert coe["aggregator"] == "math"
    assert coe["strategy"] == "synthesis-synthesize"
    assert [(e["expert"], e["ok"], e["used"]) for e in coe["experts"]] == [
        ("code", True, True), ("general", True, True), ("math", True, True)
    ]  # fmt: skip
    (call,) = aggregator_calls(fake, "math")
    assert call["stream"] is True
    assert call["stream_options"] == {"include_usage": True}


async def test_streamed_vote_sends_the_winner_then_coe(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="B", code="The answer is B", math="C")
    resp = await client3.post(URL, json=synth("python bug", k=3, strategy="vote", stream=True))
    assert resp.status_code == 200
    assert resp.headers["x-coe-experts"] == "code,general,math"
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "The answer is B"
    assert chunks[-1]["coe"]["expert"] == "code"
    assert len({c["id"] for c in chunks}) == 1


async def test_keep_alive_comments_while_the_panel_works(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    answers(fake, general="G", code="C")
    behave(fake, ["general", "code"], delay_s=0.4)
    client = await make_client(synthesis=SynthesisSettings(keepalive_s=0.05))
    async with client.stream("POST", URL, json=synth("python bug", k=2, stream=True)) as resp:
        assert resp.status_code == 200
        parts = [part async for part in resp.aiter_text()]
    body = "".join(parts)
    assert body.startswith(": keep-alive\n\n")
    before_data = body[: body.index("data: ")]
    assert before_data.count(": keep-alive\n\n") >= 4  # ~0.4 s of panel at 0.05 s
    # The aggregator's stream (also delayed 0.4 s) is preceded by keep-alives too.
    assert body.count(": keep-alive") >= 8
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"] for e in events[:-1]]
    assert "".join(c[0]["delta"].get("content", "") for c in deltas if c) == "C0 C1 C2 "


async def test_a_stream_whose_panel_times_out_later_gets_an_in_band_504(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    behave(fake, ["general", "code"], delay_s=5.0)
    client = await make_client(synthesis=SynthesisSettings(keepalive_s=0.05, expert_timeout_s=0.3))
    oai = openai_client(client)
    stream = await oai.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"coe": {"synthesis": True, "k": 2}},
    )  # fmt: skip

    async def drain() -> None:
        async for _ in stream:
            pass

    with pytest.raises(openai.APIError, match="did not answer in time"):
        await drain()
    await oai.close()


async def test_a_client_leaving_mid_panel_cancels_every_expert_call(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    behave(fake, ["general", "code"], delay_s=5.0)
    client = await make_client(synthesis=SynthesisSettings(keepalive_s=0.05))

    async def after_first_keepalive(sent: list[dict[str, Any]]) -> None:
        await until(lambda: any(m.get("body") for m in sent))

    sent = await asgi_call(app_of(client), synth("python bug", k=2, stream=True),
                           after_first_keepalive)  # fmt: skip
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b": keep-alive\n\n"
    await until(lambda: fake.cancelled == 2)


class SkillLikeRouter:
    """A router with ``recruit(messages, k)``, as Symbolic-MoE's skill router has."""

    def __init__(self, recruits: list[tuple[str, float]], aggregator: str) -> None:
        self.recruits, self.aggregator = recruits, aggregator
        self.asked_k: list[int | None] = []

    async def route(self, messages: Any) -> RoutingDecision:
        name, score = self.recruits[0]
        return RoutingDecision(name, "math", score, "skill")

    async def recruit(self, messages: Any, k: int | None = None) -> SimpleNamespace:
        self.asked_k.append(k)
        experts = [Candidate(n, s) for n, s in self.recruits]
        return SimpleNamespace(experts=experts, aggregator=self.aggregator)


async def test_a_recruiting_router_picks_the_panel_and_the_aggregator(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="G", code="C", math="M")
    # Recruits best first, with a duplicate that must not be asked twice.
    router = SkillLikeRouter([("math", 0.6), ("math", 0.6), ("general", 0.3), ("code", 0.1)],
                             aggregator="general")  # fmt: skip
    app_of(client3).state.coe.table.routers["coe"] = router
    resp = await synthesized(client3, "anything", k=2)
    assert router.asked_k == [2]
    assert resp.headers["x-coe-experts"] == "math,general"
    assert resp.headers["x-coe-aggregator"] == "general"  # the router's (profiles') choice
    assert resp.json()["choices"][0]["message"]["content"] == "G"
    assert [e["score"] for e in resp.json()["coe"]["experts"]] == [0.6, 0.3]
    # The request's aggregator wins over the router's.
    resp = await client3.post(URL, json=synth("anything", k=2, aggregator="code"))
    assert resp.headers["x-coe-aggregator"] == "code"
    assert resp.json()["choices"][0]["message"]["content"] == "C"


# --- switching it on, limits -------------------------------------------------------------


async def test_a_virtual_model_with_synthesis_config_needs_no_extension(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    answers(fake, general="7", code="7", math="8")
    resp = await client3.post(URL, json=chat("python bug", model="coe-synth"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-strategy"] == "synthesis-vote"
    assert resp.headers["x-coe-experts"] == "code,general,math"
    assert resp.json()["choices"][0]["message"]["content"] == "7"
    # The request may override the configured values ...
    resp = await client3.post(URL, json=chat("python bug", model="coe-synth",
                                             coe={"k": 2, "strategy": "best"}))  # fmt: skip
    assert resp.headers["x-coe-strategy"] == "synthesis-best"
    assert resp.headers["x-coe-experts"] == "code,general"
    # ... or switch it off: one expert answers, as routed.
    fake.received.clear()
    resp = await client3.post(URL, json=chat("python bug", model="coe-synth",
                                             coe={"synthesis": False}))  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-strategy"] == "keyword"
    assert resp.headers["x-coe-expert"] == "code"
    assert "x-coe-experts" not in resp.headers
    assert len(fake.received) == 1


async def test_the_plain_virtual_model_does_not_synthesize_unless_asked(
    client3: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    resp = await client3.post(URL, json=chat("python bug", coe={"k": 3}))
    assert resp.status_code == 200
    assert resp.headers["x-coe-strategy"] == "keyword"
    assert len(fake.received) == 1


async def test_the_default_k_is_capped_at_the_experts_there_are(
    client: httpx.AsyncClient,
) -> None:
    # default_k is 3; the default unit catalog has two experts: ask both, no 400.
    resp = await synthesized(client, "python bug")
    assert resp.headers["x-coe-experts"] == "code,general"


async def test_a_configured_aggregator_is_used(
    make_client: Callable[..., Any], fake: FakeVLLM
) -> None:
    answers(fake, general="G", code="C", math="M")
    client = await make_client(catalog=three_experts(k=2, aggregator="math"))
    resp = await client.post(URL, json=chat("python bug", model="coe-synth"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-experts"] == "code,general"
    assert resp.headers["x-coe-aggregator"] == "math"  # not on the panel, still merges
    assert resp.json()["choices"][0]["message"]["content"] == "M"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (synth("hi", k=4), "coe.k"),  # three experts
        (synth("hi", k=0), "coe.k"),
        (synth("hi", k="two"), "coe.k"),
        (synth("hi", aggregator="nobody"), "coe.aggregator"),
        (synth("hi", strategy="debate"), "coe.strategy"),
        (synth("hi", model="code"), "model"),  # a single expert cannot synthesize
        (synth("hi", model="small-coder"), "model"),
        (synth("hi", rounds=2), "coe.rounds"),
        (chat("hi", coe={"synthesis": "maybe"}), "coe.synthesis"),
        (synth("hi") | {"n": 2}, "n"),
    ],
)
async def test_bad_synthesis_requests_are_400(
    client3: httpx.AsyncClient, fake: FakeVLLM, body: dict[str, Any], param: str
) -> None:
    error = openai_error(await client3.post(URL, json=body), 400)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert not fake.received


async def test_k_is_bounded_by_the_max_k_setting(make_client: Callable[..., Any]) -> None:
    client = await make_client(catalog=three_experts(), synthesis=SynthesisSettings(max_k=2))
    error = openai_error(await client.post(URL, json=synth("hi", k=3)), 400)
    assert error["param"] == "coe.k"
    assert "at most 2" in error["message"]
    ok = await client.post(URL, json=synth("hi", k=2))
    assert ok.status_code == 200


async def test_synthesis_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COE_SYNTHESIS__MAX_K", "4")
    monkeypatch.setenv("COE_SYNTHESIS__EXPERT_TIMEOUT_S", "7.5")
    monkeypatch.setenv("COE_SYNTHESIS__DEFAULT_STRATEGY", "vote")
    s = Settings().synthesis
    assert (s.max_k, s.expert_timeout_s, s.default_strategy) == (4, 7.5, "vote")


# --- the tiered pool ---------------------------------------------------------------------


def tiered_catalog() -> dict[str, Any]:
    return {
        "experts": [
            {"name": n, "served_model_name": f"m-{n}", "replicas": [f"http://{n}:8000"],
             "memory_gb": 1.0, "generalist": n == "a", "categories": [n],
             "tier": {"sleep_mode": True, "sleep_level": 1}}
            for n in ("a", "b")
        ],
        "virtual_models": [{"name": "coe", "router": "keyword"}],
        "keywords": {"b": ["bravo"]},
    }  # fmt: skip


async def test_tiered_pool_wakes_the_panel_within_the_budget(
    make_settings: Callable[..., Settings],
) -> None:
    # Budget for one expert, a panel of two, then the aggregator: the experts take turns.
    gpu = FakeGPU({"gpu0": 1.0})
    fleet = FakeSleepFleet(gpu)
    for name in ("a", "b"):
        replica = SleepReplica(name, 1.0, wake_s=0.2, generate_s=0.2, sleep_s={1: 0.05, 2: 0.05})
        fleet.add(replica, awake=name == "a")
    settings = make_settings(
        catalog=tiered_catalog(),
        tiers=TierSettings(enabled=True, budgets_gb={"gpu0": 1.0}, prewarm=False),
        # Shorter than a turn in the queue (0.2 generate + 0.05 sleep + 0.2 wake + 0.2
        # generate): only the expert's own call counts against it, not the queue.
        synthesis=SynthesisSettings(expert_timeout_s=0.35),
    )
    app = create_app(settings, upstream_transport=fleet.transport())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
    ):
        resp = await synthesized(client, "bravo", k=2)
    body = resp.json()
    by = {e["expert"]: e for e in body["coe"]["experts"]}
    assert by["a"]["ok"], by
    assert by["b"]["ok"], by
    assert by["a"]["used"]
    assert by["b"]["used"]
    queued = [e for e in by.values() if e["wait_ms"] > 150]
    assert len(queued) == 1  # the one that waited its turn
    assert body["coe"]["aggregator"] == "b"
    assert body["choices"][0]["message"]["content"] == "b says hi"
    assert fleet.replicas["a"].answers == 1
    assert fleet.replicas["b"].answers == 2
    assert body["usage"]["total_tokens"] == 3 * 6
    assert gpu.violations == []
    assert gpu.peak_gb["gpu0"] <= 1.0


async def test_non_streamed_synthesis_stops_when_the_client_leaves(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    behave(fake, ["general", "code"], delay_s=5.0)

    async def once_both_asked(sent: list[dict[str, Any]]) -> None:
        await until(lambda: len(fake.received) == 2)

    sent = await asgi_call(app_of(client), synth("python bug", k=2), once_both_asked)
    assert sent[0]["status"] == 499
    await until(lambda: fake.cancelled == 2)


def test_the_catalog_rejects_an_unknown_configured_aggregator(tmp_path: Path) -> None:
    from coe_router.catalog import load_catalog
    from coe_router.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(three_experts(aggregator="nobody")))
    with pytest.raises(ConfigError, match="aggregator 'nobody' is not an expert"):
        load_catalog(path)
