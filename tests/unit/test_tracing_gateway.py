"""The span tree of a routed, streamed request, exported to memory; traceparent to the expert."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from coe_router import tracing
from tests.fake_sleep import FakeSleepFleet
from tests.unit.tier_fakes import Build, rep, start_gateway

pytestmark = pytest.mark.unit


class StreamingFleet:
    """The sleep-mode fleet, answering ``stream: true`` as SSE; keeps every request."""

    def __init__(self, fleet: FakeSleepFleet) -> None:
        self.fleet = fleet
        self.requests: list[httpx.Request] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        resp = await self.fleet.handle(request)
        if request.url.path != "/v1/chat/completions" or resp.status_code != 200:
            return resp
        body = json.loads(await request.aread())
        if not body.get("stream"):
            return resp
        text = resp.json()["choices"][0]["message"]["content"]
        chunks = [{"role": "assistant", "content": ""}, {"content": text}, {}]
        events = [
            {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": body["model"], "choices": [{"index": 0, "delta": d,
                                                  "finish_reason": "stop" if not d else None}]}
            for d in chunks
        ]  # fmt: skip
        payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=payload + b"data: [DONE]\n\n")  # fmt: skip


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[Build]:
    async with AsyncExitStack() as stack:
        yield functools.partial(start_gateway, stack, tmp_path)


def tree(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    names = [s.name for s in finished]
    assert len(names) == len(set(names)), names  # one of each for one request
    return {s.name: s for s in finished}


def children_of(span: ReadableSpan, spans: dict[str, ReadableSpan]) -> set[str]:
    return {n for n, s in spans.items() if s.parent is not None
            and s.parent.span_id == span.context.span_id}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "api", "body"),
    [
        ("/v1/chat/completions", "chat.completions", {}),
        ("/v1/messages", "messages", {"max_tokens": 16}),
    ],
)
async def test_a_routed_streamed_request_is_one_trace(
    make_gateway: Build,
    spans: InMemorySpanExporter,
    path: str,
    api: str,
    body: dict[str, Any],
) -> None:
    seen: list[StreamingFleet] = []

    def transport(fleet: FakeSleepFleet) -> httpx.MockTransport:
        seen.append(StreamingFleet(fleet))
        return httpx.MockTransport(seen[0].handle)

    gw = await make_gateway([rep("a", wake_s=0.01), rep("b")], transport=transport)
    client_trace = "0af7651916cd43dd8448eb211c80319c"
    resp = await gw.client.post(
        path,
        json={"model": "coe", "stream": True, **body,
              "messages": [{"role": "user", "content": "a question for a"}]},
        headers={"traceparent": f"00-{client_trace}-b7ad6b7169203331-01"},
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-expert"] == "a"
    got = tree(spans)
    root = got[tracing.REQUEST]
    assert set(got) == {tracing.REQUEST, tracing.VALIDATE, tracing.ROUTE, tracing.AFFINITY,
                        tracing.TIER_ACQUIRE, tracing.EXPERT_CALL}  # fmt: skip
    # The root continues the client's trace, and everything else hangs under it.
    assert format(root.context.trace_id, "032x") == client_trace
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == "b7ad6b7169203331"
    assert root.kind is SpanKind.SERVER
    assert children_of(root, got) == set(got) - {tracing.REQUEST}
    assert {s.context.trace_id for s in got.values()} == {root.context.trace_id}
    attrs = dict(root.attributes or {})
    assert attrs["coe.api"] == api
    assert attrs["gen_ai.request.model"] == "coe"
    assert attrs["coe.stream"] is True
    assert attrs["http.response.status_code"] == 200
    assert attrs["coe.expert"] == "a"
    route = dict(got[tracing.ROUTE].attributes or {})
    assert (route["coe.expert"], route["coe.category"], route["coe.strategy"]) == (
        "a", "a", "keyword")  # fmt: skip
    assert 0 < float(route["coe.confidence"]) <= 1  # type: ignore[arg-type]
    affinity = dict(got[tracing.AFFINITY].attributes or {})
    assert (affinity["coe.affinity"], affinity["coe.tool_loop"]) == ("new", False)
    tier = dict(got[tracing.TIER_ACQUIRE].attributes or {})
    assert (tier["coe.expert"], tier["coe.tier"], tier["coe.tier.woke"]) == ("a", "cold", True)
    call = got[tracing.EXPERT_CALL]
    assert call.kind is SpanKind.CLIENT
    call_attrs = dict(call.attributes or {})
    assert call_attrs["coe.expert"] == "a"
    assert call_attrs["coe.replica"] == "http://a:8000"
    assert call_attrs["http.response.status_code"] == 200
    assert call_attrs["coe.stream"] is True
    assert float(call_attrs["coe.ttft_s"]) >= 0  # type: ignore[arg-type]
    # The stream's spans end with the stream: the root last, after the call.
    assert root.end_time is not None
    assert call.end_time is not None
    assert root.end_time >= call.end_time
    # The expert got a traceparent naming the expert call span.
    (upstream,) = [r for r in seen[0].requests if r.url.path == "/v1/chat/completions"]
    _, trace_id, parent_id, _ = upstream.headers["traceparent"].split("-")
    assert trace_id == client_trace
    assert parent_id == format(call.context.span_id, "016x")


async def test_without_tracing_no_traceparent_is_sent(make_gateway: Build) -> None:
    seen: list[StreamingFleet] = []

    def transport(fleet: FakeSleepFleet) -> httpx.MockTransport:
        seen.append(StreamingFleet(fleet))
        return httpx.MockTransport(seen[0].handle)

    gw = await make_gateway([rep("a")], awake=("a",), transport=transport)
    resp = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "coe", "messages": [{"role": "user", "content": "a"}]},
    )
    assert resp.status_code == 200
    (upstream,) = [r for r in seen[0].requests if r.url.path == "/v1/chat/completions"]
    assert "traceparent" not in upstream.headers


@pytest.mark.parametrize("stream", [False, True])
async def test_a_synthesis_traces_its_panel_under_one_span(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, stream: bool
) -> None:
    resp = await client.post("/v1/chat/completions", json={
        "model": "coe", "stream": stream, "coe": {"synthesis": True, "k": 2},
        "messages": [{"role": "user", "content": "write a poem"}]})  # fmt: skip
    assert resp.status_code == 200, resp.text
    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.name == tracing.REQUEST]
    (synthesis,) = [s for s in finished if s.name == tracing.SYNTHESIS]
    calls = [s for s in finished if s.name == tracing.EXPERT_CALL]
    assert synthesis.parent is not None
    assert synthesis.parent.span_id == root.context.span_id
    attrs = dict(synthesis.attributes or {})
    assert set(attrs["coe.synthesis.panel"]) == {"general", "code"}  # type: ignore[arg-type]
    assert attrs["coe.synthesis.aggregator"] in ("general", "code")
    # Two panel answers and the aggregator's merge, all under the synthesis span.
    assert len(calls) == 3
    assert {c.parent.span_id for c in calls if c.parent} == {synthesis.context.span_id}
    assert root.end_time is not None
    assert synthesis.end_time is not None
    assert root.end_time >= synthesis.end_time
