"""Building the OpenTelemetry SDK pipeline from the standard ``OTEL_*`` variables.

Imported by :func:`coe_router.tracing.configure` only; the SDK itself is imported inside
the functions here, only when tracing is turned on (see :mod:`coe_router.tracing` for the
variables that are read).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("coe_router.tracing")

#: The exporters ``OTEL_TRACES_EXPORTER`` may name.
EXPORTERS = ("otlp", "console")


def wanted_exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters the ``OTEL_*`` variables ask for; empty means tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        names = [n.strip() for n in named.split(",") if n.strip()]
        if "none" in names:
            return []
        for unknown in [n for n in names if n not in EXPORTERS]:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored", unknown)
        return [n for n in names if n in EXPORTERS]
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return ["otlp"] if any(environ.get(e, "").strip() for e in endpoints) else []


def build_provider(
    env: Mapping[str, str], exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """The tracer provider the variables (or the test ``exporter``) ask for; None when
    tracing stays off (nothing asked for, or the SDK is not installed)."""
    names = [] if exporter is not None else wanted_exporters(env)
    if exporter is None and not names:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        # Asked for but not installed: say how to get it, and serve without traces.
        log.error(
            "tracing is configured (%s) but OpenTelemetry is not installed: "
            "pip install 'coe-router[otel]'; tracing stays off",
            ", ".join(names),
        )
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "coe-router"}))
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(build_exporter(name, env)))
    return provider


def build_exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    """The span exporter ``name`` (``otlp`` or ``console``); OTLP over the protocol the
    environment names, ``http/protobuf`` by default."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPExporter,
    )

    return HTTPExporter()
