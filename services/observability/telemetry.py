"""OpenTelemetry: one tracer provider per service process, and trace context carried in NATS headers
(`traceparent`, W3C), so one trace follows a task from the API request through the publish, the
worker, the projector and the webhook delivery.

Spans are exported over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT (or the traces-only
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; otherwise the SDK records spans and drops them (context
still propagates, so a later hop that does export keeps the trace id). The exporter reads the
standard OTEL_* variables itself (headers, timeout, OTEL_BSP_* for batching).
"""

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None  # the provider's, made once: get_tracer builds a new one each call
_exporting = False  # whether any span leaves the process (an exporter or a test's processor)


def setup(service: str, processor: SpanProcessor | None = None,
          environ: Mapping[str, str] | None = None) -> TracerProvider:
    """Install this process's tracer provider (once, at service start). `processor`: an extra span
    processor (tests pass a SimpleSpanProcessor(InMemorySpanExporter()))."""
    global _provider, _tracer, _exporting
    environ = os.environ if environ is None else environ
    provider = TracerProvider(resource=Resource.create({"service.name": f"diffbus-{service}"}))
    _exporting = processor is not None or any(environ.get(name) for name in ENDPOINT_VARIABLES)
    if any(environ.get(name) for name in ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if processor is not None:
        provider.add_span_processor(processor)
    if _provider is None:
        trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("diffbus")
    return provider


def shutdown() -> None:
    """Flush what is batched (call before the process exits)."""
    if _provider is not None:
        _provider.shutdown()


def tracer() -> trace.Tracer:
    """The tracer every service module uses: the installed provider's, else the global (no-op) one."""
    return _tracer or trace.get_tracer_provider().get_tracer("diffbus")


def headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """NATS headers carrying the current trace context, plus `extra` (e.g. Nats-Msg-Id)."""
    carrier: dict[str, str] = dict(extra or {})
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> context.Context:
    """The trace context a message (or HTTP request) carried; an empty context when it carried none."""
    return propagate.extract(carrier if carrier is not None else {})


def link(carrier: Mapping[str, str] | None) -> Link | None:
    span_context = trace.get_current_span(extract(carrier)).get_span_context()
    return Link(span_context) if span_context.is_valid else None


@contextlib.contextmanager
def consuming(name: str, carriers: list[Mapping[str, str] | None], **attributes) -> Iterator[trace.Span]:
    """A consumer span whose parent is the first message's context; the others (a batch) are linked."""
    links = [lk for lk in map(link, carriers[1:]) if lk is not None]
    with tracer().start_as_current_span(name, context=extract(carriers[0] if carriers else None),
                                        kind=SpanKind.CONSUMER, links=links, attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def applying(name: str, msgs: list) -> Iterator[None]:
    """Spans for stream messages handled together (the projector's batch): each in its own trace,
    all covering the same work. None when no span leaves the process: these spans have no children
    to hand their context to."""
    if not _exporting:
        yield
        return
    spans = [tracer().start_span(name, context=extract(m.headers), kind=SpanKind.CONSUMER,
                                 attributes={"subject": m.subject, "stream_seq": m.metadata.sequence.stream})
             for m in msgs]
    try:
        yield
    finally:
        for s in spans:
            s.end()


def span(name: str, **attributes):
    """A child span of the current one (a context manager)."""
    return tracer().start_as_current_span(name, attributes=attributes)


def in_context(fn: Callable) -> Callable:
    """`fn` bound to the current context, for run_in_executor (which does not copy contextvars):
    spans opened in the worker thread nest under the caller's."""
    ctx = contextvars.copy_context()
    return lambda *args: ctx.run(fn, *args)
