"""Tracing: off (no opentelemetry import, no-op spans), on (spans to an in-memory exporter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from coe_router import tracing

pytestmark = pytest.mark.unit


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_off_by_default_imports_no_opentelemetry() -> None:
    code = textwrap.dedent("""
        import os, sys
        for k in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[k]
        from coe_router import tracing
        t = tracing.configure()
        assert not t.enabled
        headers = {}
        incoming = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        with tracing.request_span("messages", "coe", incoming) as root:
            with tracing.routing_span("coe") as r:
                tracing.set_routing(r, expert="code", category="code", confidence=0.9,
                                    strategy="keyword")
            call = tracing.expert_span("code", "small-coder", True)
            call.inject(headers)
            tracing.set_expert_result(call, replica="http://a", status=200, ttft_s=0.1)
            call.end()
        assert root is tracing.NOOP_SPAN and not root.recording
        assert headers == {}
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        print("ok")
    """)
    root = Path(__file__).resolve().parents[2]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "gw"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ],
)
def test_the_standard_variables_decide_whether_tracing_is_on(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert tracing.wanted_exporters(environ) == expected


def test_otlp_uses_http_protobuf_unless_grpc_is_asked_for() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    assert isinstance(tracing.build_exporter("otlp", {}), Http)
    grpc = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert isinstance(tracing.build_exporter("otlp", grpc), Grpc)
    traces_only = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                   "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}  # fmt: skip
    assert isinstance(tracing.build_exporter("otlp", traces_only), Http)


def test_configure_from_the_environment_turns_tracing_on_and_off() -> None:
    try:
        assert tracing.configure({"OTEL_TRACES_EXPORTER": "console"}).enabled
        assert tracing.tracer().enabled
        assert not tracing.configure({}).enabled
        assert tracing.request_span("messages", "coe", {}) is tracing.NOOP_SPAN
    finally:
        tracing.reset()


def test_spans_nest_and_carry_their_attributes(spans: InMemorySpanExporter) -> None:
    with tracing.request_span("messages", "coe", {}):
        with tracing.validation_span():
            pass
        with tracing.routing_span("coe") as route:
            tracing.set_routing(route, expert="code", category="code", confidence=0.75,
                                strategy="category", encoder_ms=3.5)  # fmt: skip
        with tracing.affinity_span(tool_loop=True) as affinity:
            affinity.set("coe.affinity", "sticky")
        with tracing.tier_span("code", "warm") as tier:
            tier.set("coe.tier.woke", True)
        call = tracing.expert_span("code", "small-coder", stream=True)
    tracing.set_expert_result(call, replica="http://code-a:8000", status=200, ttft_s=0.25,
                              input_tokens=12, output_tokens=30, finish_reason="stop")  # fmt: skip
    call.end()
    got = by_name(spans)
    assert set(got) == {tracing.REQUEST, tracing.VALIDATE, tracing.ROUTE, tracing.AFFINITY,
                        tracing.TIER_ACQUIRE, tracing.EXPERT_CALL}  # fmt: skip
    root_span = got[tracing.REQUEST]
    assert root_span.parent is None
    assert root_span.kind is SpanKind.SERVER
    for name in (tracing.VALIDATE, tracing.ROUTE, tracing.AFFINITY, tracing.TIER_ACQUIRE,
                 tracing.EXPERT_CALL):  # fmt: skip
        parent = got[name].parent
        assert parent is not None, name
        assert parent.span_id == root_span.context.span_id, name
    assert dict(got[tracing.ROUTE].attributes or {}) == {
        "gen_ai.request.model": "coe", "coe.expert": "code", "coe.category": "code",
        "coe.confidence": 0.75, "coe.strategy": "category", "coe.encoder_ms": 3.5}  # fmt: skip
    assert got[tracing.AFFINITY].attributes == {"coe.tool_loop": True, "coe.affinity": "sticky"}
    expert = got[tracing.EXPERT_CALL]
    assert expert.kind is SpanKind.CLIENT
    assert expert.attributes is not None
    assert expert.attributes["coe.replica"] == "http://code-a:8000"
    assert expert.attributes["http.response.status_code"] == 200
    assert expert.attributes["gen_ai.usage.output_tokens"] == 30
    assert tuple(expert.attributes["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]
    assert root_span.resource.attributes["service.name"] == "coe-router"


def test_traceparent_names_the_expert_call_and_continues_the_client_trace(
    spans: InMemorySpanExporter,
) -> None:
    client_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = {"traceparent": f"00-{client_trace}-00f067aa0ba902b7-01"}
    headers: dict[str, str] = {}
    with tracing.request_span("chat.completions", "coe", incoming):
        call = tracing.expert_span("general", "small-general", stream=False)
        call.inject(headers)
        call.end()
    expert = by_name(spans)[tracing.EXPERT_CALL]
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert (version, flags) == ("00", "01")
    assert trace_id == client_trace == format(expert.context.trace_id, "032x")
    assert parent_id == format(expert.context.span_id, "016x")
    root = by_name(spans)[tracing.REQUEST]
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"


def test_inject_on_the_tracer_uses_the_current_span(spans: InMemorySpanExporter) -> None:
    headers: dict[str, str] = {}
    with tracing.synthesis_span("synthesize", ["general", "code"], "general") as synthesis:
        tracing.tracer().inject(headers)
        assert synthesis.recording
    assert not synthesis.recording  # ended
    span = by_name(spans)[tracing.SYNTHESIS]
    assert headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
    assert tuple(span.attributes["coe.synthesis.panel"]) == ("general", "code")  # type: ignore[index,arg-type]


def test_an_exception_marks_the_span_failed(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.routing_span("coe"):
        raise RuntimeError("encoder crashed")
    span = by_name(spans)[tracing.ROUTE]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "encoder crashed"
    assert [e.name for e in span.events] == ["exception"]


def test_fail_with_a_message_and_end_twice(spans: InMemorySpanExporter) -> None:
    call = tracing.expert_span("code", "small-coder", stream=True)
    call.fail("client closed the stream")
    call.end()
    call.end()
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "client closed the stream"


def test_asked_for_but_not_installed_stays_off_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)  # import fails
    try:
        assert not tracing.configure({"OTEL_TRACES_EXPORTER": "console"}).enabled
    finally:
        tracing.reset()
    assert "coe-router[otel]" in caplog.text
