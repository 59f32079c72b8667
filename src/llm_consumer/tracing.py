"""W3C Trace Context in, through and out, with OpenTelemetry.

A request may carry `traceparent` / `tracestate` as CloudEvents extension attributes (the
distributed-tracing extension) or as AMQP headers of the same names. The service continues that
trace: each request runs in a span (`llm.request`) whose parent is the caller's, its stages get
child spans (queue wait, admission, provider call, storage, publish), and every event it
publishes for the request, and every provider HTTP call, carries the trace context of the
current span.

Only the OpenTelemetry API is a dependency. Without an SDK (TRACING=off, the default) spans are
not recorded, but the trace id still travels: the current span is the caller's own context, so
results carry the caller's trace id. `TRACING=otlp` installs the SDK with an OTLP/HTTP exporter
(the `otel` extra; the standard OTEL_EXPORTER_OTLP_* variables configure it), `console` prints
spans.

Caller-supplied values are untrusted: a malformed `traceparent` is ignored (the propagator
validates it), and values over MAX_FIELD_CHARS are not read at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Literal

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACE_FIELDS = ("traceparent", "tracestate")
MAX_FIELD_CHARS = 512
MAX_QUEUE_WAIT_NS = 86_400 * 10**9
Exporter = Literal["off", "otlp", "console"]

_PROPAGATOR = TraceContextTextMapPropagator()
_configured = False  # the SDK is installed once per process
tracer = trace.get_tracer("llm_consumer")


def incoming(extensions: Mapping[str, object] | None,
             headers: Mapping[str, object] | None) -> context.Context:
    """The caller's trace context: the envelope's extension attributes first, else the AMQP
    headers; an empty context when neither carries a valid one."""
    carrier: dict[str, str] = {}
    for name in TRACE_FIELDS:
        value = _text((extensions or {}).get(name)) or _text((headers or {}).get(name))
        if value is not None:
            carrier[name] = value
    return _PROPAGATOR.extract(carrier) if carrier else context.Context()


def outgoing() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for an event or an HTTP call;
    empty outside any trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


@contextmanager
def request_span(name: str, parent: context.Context, *, queued_at: datetime | None,
                 attributes: Mapping[str, str | int]) -> Iterator[Span]:
    """The span of one request, a child of the caller's; with a `queue_wait` child covering
    the time from the caller's publish (the AMQP timestamp) to now."""
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER,
                                      attributes=dict(attributes)) as span:
        if queued_at is not None and span.is_recording():
            started = int(queued_at.timestamp() * 1e9)
            if 0 <= time.time_ns() - started <= MAX_QUEUE_WAIT_NS:  # a caller's clock: sane only
                tracer.start_span("llm.queue_wait", start_time=started).end()
        yield span


@contextmanager
def stage(name: str, **attributes: str | int) -> Iterator[Span]:
    """A child span of the current one (an exception escaping it is recorded on it).

    Without an SDK the child would record nothing and carry its parent's ids, so the current
    span is used as it is: the same trace context goes out, without the API's span and context
    churn (five or more stages a request, about 2% of a cache hit's CPU)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        yield trace.get_current_span()
        return
    with tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def configure(exporter: Exporter, service_name: str) -> None:
    """Install the SDK when spans should be recorded (`otlp` needs the `otel` extra)."""
    global _configured
    if exporter == "off" or _configured:
        return
    _configured = True
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    span_exporter: SpanExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) and 0 < len(value) <= MAX_FIELD_CHARS else None
