"""OpenTelemetry traces of a request: gateway, routing, tiers, expert calls, synthesis.

Off by default and free when off: nothing imports ``opentelemetry`` until tracing is
turned on, and every helper then returns one shared no-op span. It is configured by the
standard ``OTEL_*`` variables only, and is on when an exporter is asked for:

* ``OTEL_TRACES_EXPORTER`` names ``otlp`` and/or ``console`` (``none`` keeps it off), or
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (OTLP);
* ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.

The OTLP protocol follows ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the specification's default, or
``grpc``). The SDK itself reads the rest: endpoint, headers, timeouts
(``OTEL_EXPORTER_OTLP_*``), sampler (``OTEL_TRACES_SAMPLER``, ``..._ARG``), batching
(``OTEL_BSP_*``), resource (``OTEL_SERVICE_NAME``, default ``coe-router``;
``OTEL_RESOURCE_ATTRIBUTES``) and propagators (``OTEL_PROPAGATORS``, default W3C trace
context). Install the ``otel`` extra (``pip install coe-router[otel]``).

The gateway continues a client's trace (its ``traceparent``), and sends one to every
expert call (:meth:`Span.inject`) so vLLM's own spans (``--otlp-traces-endpoint``) join
the trace. Span names and attribute keys live here, in one place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from coe_router.tracing_export import build_exporter as build_exporter
from coe_router.tracing_export import build_provider
from coe_router.tracing_export import wanted_exporters as wanted_exporters

if TYPE_CHECKING:  # the SDK is imported only when tracing is turned on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as OTelSpan
    from opentelemetry.trace import Tracer as OTelTracer

log = logging.getLogger("coe_router.tracing")

AttrValue: TypeAlias = str | bool | int | float | Sequence[str]
SpanKind: TypeAlias = Literal["internal", "server", "client"]

# --- span names -------------------------------------------------------------------------------
REQUEST = "coe.request"
VALIDATE = "coe.validate"
ROUTE = "coe.route"
ENCODE = "coe.route.encode"
AFFINITY = "coe.affinity"
TIER_ACQUIRE = "coe.tier.acquire"
EXPERT_CALL = "coe.expert.call"
SYNTHESIS = "coe.synthesis"

#: Exporter names of ``OTEL_TRACES_EXPORTER`` this module knows.


class Span(Protocol):
    """A span, or the no-op stand-in when tracing is off.

    As a context manager it is made current on entry (spans started inside become its
    children) and ended on exit, recording an exception that escapes. A span that
    outlives one block (a streamed answer) is started, made current with ``with`` for
    the part that starts children, and ended with :meth:`end` later.
    """

    @property
    def recording(self) -> bool:
        """Whether attributes set on this span go anywhere (False when off or sampled out)."""
        ...

    def set(self, key: str, value: AttrValue | None) -> None:
        """Set one attribute; ``None`` is skipped."""
        ...

    def update(self, attributes: Mapping[str, AttrValue | None]) -> None:
        """Set several attributes; ``None`` values are skipped."""
        ...

    def fail(self, exc: BaseException | str) -> None:
        """Mark the span failed, recording the exception (or the message)."""
        ...

    def end(self) -> None:
        """End the span (idempotent)."""
        ...

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add ``traceparent`` (and any other configured propagation headers) naming this
        span as the parent of the receiver's work."""
        ...

    def current(self) -> AbstractContextManager[None]:
        """Make the span current for a block without ending it (an exception that escapes
        still marks it failed): for a span that something else ends later."""
        ...

    def __enter__(self) -> Span: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class _NoopSpan:
    """The span of disabled tracing: every method does nothing."""

    recording = False

    def set(self, key: str, value: AttrValue | None) -> None:
        """Nothing to record."""

    def update(self, attributes: Mapping[str, AttrValue | None]) -> None:
        """Nothing to record."""

    def fail(self, exc: BaseException | str) -> None:
        """Nothing to record."""

    def end(self) -> None:
        """Nothing to end."""

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """No trace to propagate."""

    def current(self) -> AbstractContextManager[None]:
        """Nothing to make current."""
        return _NOOP_BLOCK

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


NOOP_SPAN = _NoopSpan()
_NOOP_BLOCK = nullcontext()


class _LiveSpan:
    """An OpenTelemetry span behind the :class:`Span` protocol."""

    def __init__(self, span: OTelSpan) -> None:
        self._span = span
        self._token: object | None = None
        self._ended = False

    @property
    def recording(self) -> bool:
        return self._span.is_recording()

    def set(self, key: str, value: AttrValue | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value if isinstance(value, str | bool | int | float)
                                     else list(value))  # fmt: skip

    def update(self, attributes: Mapping[str, AttrValue | None]) -> None:
        for key, value in attributes.items():
            self.set(key, value)

    def fail(self, exc: BaseException | str) -> None:
        from opentelemetry.trace import Status, StatusCode

        if isinstance(exc, BaseException):
            self._span.record_exception(exc)
            self._span.set_attribute("error.type", type(exc).__name__)
            description = str(exc) or type(exc).__name__
        else:
            description = exc
        self._span.set_status(Status(StatusCode.ERROR, description))

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._span.end()

    def inject(self, headers: MutableMapping[str, str]) -> None:
        from opentelemetry import propagate, trace

        propagate.inject(headers, context=trace.set_span_in_context(self._span))

    @contextmanager
    def current(self) -> Iterator[None]:
        from opentelemetry import context, trace

        token = context.attach(trace.set_span_in_context(self._span))
        try:
            yield
        except BaseException as exc:
            self.fail(exc)
            raise
        finally:
            context.detach(token)

    def __enter__(self) -> _LiveSpan:
        from opentelemetry import context, trace

        self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from opentelemetry import context

        if exc is not None:
            self.fail(exc)
        if self._token is not None:
            context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        self.end()


class Tracer:
    """Starts spans; disabled (the default) it only hands out :data:`NOOP_SPAN`."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer: OTelTracer | None = (
            provider.get_tracer("coe_router") if provider is not None else None
        )

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded and exported."""
        return self._tracer is not None

    def start(
        self,
        name: str,
        attributes: Mapping[str, AttrValue | None] | None = None,
        *,
        kind: SpanKind = "internal",
        carrier: Mapping[str, str] | None = None,
    ) -> Span:
        """Start a span, a child of the current one, or of the trace that ``carrier`` (the
        incoming request's headers) names."""
        if self._tracer is None:
            return NOOP_SPAN
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind as Kind

        parent = propagate.extract(carrier) if carrier is not None else None
        kinds = {"internal": Kind.INTERNAL, "server": Kind.SERVER, "client": Kind.CLIENT}
        attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
        span = self._tracer.start_span(
            name, context=parent, kind=kinds[kind],
            attributes={k: v if isinstance(v, str | bool | int | float) else list(v)
                        for k, v in attrs.items()},
        )  # fmt: skip
        return _LiveSpan(span)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add the current span's ``traceparent`` to ``headers`` (nothing when off)."""
        if self._tracer is None:
            return
        from opentelemetry import propagate

        propagate.inject(headers)

    def shutdown(self) -> None:
        """Export what is pending and stop (at gateway shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()


_DISABLED = Tracer()
_active = _DISABLED


def tracer() -> Tracer:
    """The process's tracer (disabled until :func:`configure` turns it on)."""
    return _active


def configure(
    environ: Mapping[str, str] | None = None, *, exporter: SpanExporter | None = None
) -> Tracer:
    """Turn tracing on or off for this process and return the tracer.

    ``environ`` defaults to ``os.environ``. ``exporter`` (tests: an in-memory exporter)
    turns tracing on with that exporter alone, exporting each span as it ends.
    """
    global _active
    _active.shutdown()
    env = os.environ if environ is None else environ
    provider = build_provider(env, exporter)
    _active = _DISABLED if provider is None else Tracer(provider)
    return _active


def reset() -> None:
    """Turn tracing off again (flushing what is pending)."""
    global _active
    _active.shutdown()
    _active = _DISABLED


# --- the spans of a request -------------------------------------------------------------------


def request_span(api: str, model: str | None, headers: Mapping[str, str]) -> Span:
    """The root span of one API request (``api``: ``chat.completions``, ``messages``...),
    continuing the client's trace when its headers carry one."""
    return _active.start(
        REQUEST, {"coe.api": api, "gen_ai.request.model": model}, kind="server", carrier=headers
    )


def validation_span() -> Span:
    """Reading and validating the body."""
    return _active.start(VALIDATE)


def routing_span(model: str) -> Span:
    """The router's decision; finish with :func:`set_routing`."""
    return _active.start(ROUTE, {"gen_ai.request.model": model})


def set_routing(
    span: Span,
    *,
    expert: str,
    category: str | None,
    confidence: float,
    strategy: str,
    encoder_ms: float | None = None,
) -> None:
    """What the router decided (``encoder_ms``: time spent embedding, when it embeds)."""
    span.update({"coe.expert": expert, "coe.category": category, "coe.confidence": confidence,
                 "coe.strategy": strategy, "coe.encoder_ms": encoder_ms})  # fmt: skip


def encoder_span(texts: int, computed: int) -> Span:
    """Embedding ``computed`` of ``texts`` texts (the others were cached) for a trained
    router; set ``coe.encoder_ms``."""
    return _active.start(ENCODE, {"coe.encoder.texts": texts, "coe.encoder.computed": computed})


def affinity_span(tool_loop: bool) -> Span:
    """Session affinity; set ``coe.affinity`` (the outcome) and ``coe.expert`` on it."""
    return _active.start(AFFINITY, {"coe.tool_loop": tool_loop})


def tier_span(expert: str, tier: str | None) -> Span:
    """Waiting for a slot on ``expert`` (``tier``: where it was); set ``coe.tier.woke``."""
    return _active.start(TIER_ACQUIRE, {"coe.expert": expert, "coe.tier": tier})


def expert_span(expert: str, model: str, stream: bool) -> Span:
    """One call to an expert (a client span: inject its ``traceparent`` into the call);
    finish with :func:`set_expert_result`."""
    return _active.start(
        EXPERT_CALL,
        {"coe.expert": expert, "gen_ai.request.model": model, "coe.stream": stream},
        kind="client",
    )


def set_expert_result(
    span: Span,
    *,
    replica: str | None = None,
    status: int | None = None,
    ttft_s: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    finish_reason: str | None = None,
) -> None:
    """How the expert call went (the fields known, as they become known)."""
    span.update({
        "coe.replica": replica, "http.response.status_code": status, "coe.ttft_s": ttft_s,
        "gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": output_tokens,
        "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else None,
    })  # fmt: skip


def synthesis_span(strategy: str, panel: Sequence[str], aggregator: str | None) -> Span:
    """Several experts answer and one answer is made of theirs."""
    return _active.start(
        SYNTHESIS,
        {"coe.synthesis.strategy": strategy, "coe.synthesis.panel": list(panel),
         "coe.synthesis.aggregator": aggregator},
    )  # fmt: skip
