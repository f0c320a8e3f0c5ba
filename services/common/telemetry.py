"""OpenTelemetry tracing: a span per RPC on every service, W3C trace context in gRPC metadata.

Tracing is off unless the standard `OTEL_*` settings turn it on (see `TracingSettings`). While it
is off, servers and clients skip tracing entirely: no spans, no metadata, and the SDK is not even
imported. Spans carry request ids, models, and where the call's time went (`services.common.timing`)
as attributes, never payloads.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

_TRACER_NAME = "maas"
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    """True once tracing is installed in this process."""
    return _tracer is not None


def install(provider: TracerProvider) -> None:
    """Trace through `provider` from now on (also how tests plug in an in-memory exporter)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(_TRACER_NAME)


def configure(service: str, settings: TracingSettings | None = None) -> bool:
    """Turn tracing on for this process if the `OTEL_*` settings ask for it.

    Args:
        service: the service name spans report when `OTEL_SERVICE_NAME` is unset.
        settings: tracing settings; read from the environment when None.

    Returns:
        True if tracing is now on.

    Raises:
        ValueError: an exporter or protocol named in the settings is not supported.
    """
    settings = settings or TracingSettings()
    exporters = settings.exporters()
    if not exporters:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    processors: list[SpanProcessor] = []
    for name in exporters:
        if name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        elif settings.exporter_otlp_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            processors.append(BatchSpanProcessor(HttpExporter()))
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name or service}))
    for processor in processors:
        provider.add_span_processor(processor)
    install(provider)
    log.info("tracing on: exporters %s", ", ".join(exporters))
    return True


def shutdown() -> None:
    """Flush spans not yet exported and stop tracing."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def start_server_span(method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Span:
    """Start the span of an incoming call, child of the trace context in its metadata, and make it
    current for the rest of the handler's task.

    Args:
        method: the full gRPC method, `/package.Service/Method`.
        metadata: the call's invocation metadata.
    """
    assert _tracer is not None
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    parent = propagate.extract(carrier)
    span = _tracer.start_span(
        method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=_rpc_attributes(method)
    )
    otel_context.attach(trace.set_span_in_context(span, parent))
    return span


def end_span(span: Span, code_name: str, code_value: int, details: str = "") -> None:
    """Record a call's status on its span and end it."""
    span.set_attribute("rpc.grpc.status_code", code_value)
    if code_name != "OK":
        span.set_status(Status(StatusCode.ERROR, f"{code_name}: {details}" if details else code_name))
    span.end()


@contextmanager
def client_span(method: str, target: str, metadata: list[tuple[str, str]]) -> Iterator[Span | None]:
    """Trace an outgoing call: a CLIENT span, its context injected into `metadata` (W3C traceparent).

    Yields None, and touches nothing, while tracing is off.
    """
    if _tracer is None:
        yield None
        return
    attributes = {**_rpc_attributes(method), "server.address": target}
    with _tracer.start_as_current_span(
        method.lstrip("/"), kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata.extend(carrier.items())
        yield span
