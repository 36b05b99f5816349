"""OpenTelemetry traces: setting `tracing` (off by default); the `tracing` extra installs the packages.

Each HTTP request gets its server span from opentelemetry-instrumentation-fastapi and, under it, one
span per phase that `Server-Timing` reports (decode, queue, infer, encode): the intervals that
service/timing.py records on the request's path, so the header and the trace tell the same story.
The server span carries the request id (`X-Request-ID`) and the model that answered. Health and
metrics scrapes are not traced; the WebSocket stream is not either (one span per frame would be
noise, and its URL may carry an `api_key`). Any traced URL has its `api_key` query values blanked
(`***`), as in the log lines. Where spans go: `otlp` sends them in batches over OTLP/HTTP to the
collector named by the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
variables (default http://localhost:4318); `console` prints them (to try it out). `OTEL_SERVICE_NAME`
names the service (default enet-serve).
"""
from __future__ import annotations

import os
import time
from typing import Any

from enet_serve.service import timing
from enet_serve.service._version import __version__
from enet_serve.service.api.deps import served_model
from enet_serve.service.logs import redact_query
from enet_serve.service.request_id import REQUEST_ID
from enet_serve.service.settings import Settings

TRACER_NAME = "enet_serve.service"
# the instrumentation's excluded_urls: regular expressions searched in scheme://host/path (no query)
NOT_TRACED = "health/.*,metrics,segment/stream"
# the span attributes that carry the request's query (the old and the stable HTTP semantic conventions)
URL_ATTRIBUTES = ("http.url", "url.full")
QUERY_ATTRIBUTES = ("url.query",)
INSTALL_HINT = "pip install 'enet-serve[tracing]'"


class TracingUnavailable(RuntimeError):
    """tracing is configured but the OpenTelemetry packages are not installed."""


def span_processor(kind: str) -> Any:
    """The span processor for `tracing=kind` (`otlp`: batched export; `console`: each span printed)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if kind == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter())


def install_tracing(app, settings: Settings):
    """Instrument `app` when `settings.tracing` is on; the TracerProvider (shut it down at exit), else None.
    Call it before adding `ServerTimingMiddleware`, which must wrap `PhaseSpans`."""
    if settings.tracing == "off":
        return None
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as e:
        raise TracingUnavailable(f"tracing={settings.tracing} needs the OpenTelemetry packages ({e.name} is "
                                 f"missing): {INSTALL_HINT}") from None
    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "enet-serve"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(span_processor(settings.tracing))
    app.add_middleware(PhaseSpans, tracer=provider.get_tracer(TRACER_NAME, __version__))
    # no spans per ASGI receive/send message: the phases say where the time went
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=NOT_TRACED,
                                       exclude_spans=["receive", "send"], server_request_hook=redact_key_attributes)
    return provider


def redact_key_attributes(span, scope) -> None:
    """The instrumentation's server_request_hook: the server span's URL attributes with any API key query
    value blanked (the instrumentation itself redacts only AWS and GCS signature parameters)."""
    raw = scope.get("query_string") or b""
    query = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    redacted = redact_query(query)
    if redacted == query or not span.is_recording():
        return
    from urllib.parse import unquote

    from opentelemetry.instrumentation.asgi import get_host_port_url_tuple
    try:
        from opentelemetry.util.http import redact_url
    except ImportError:  # opentelemetry-util-http before redact_url: what the instrumentation did then
        from opentelemetry.util.http import remove_url_credentials as redact_url

    present = getattr(span, "attributes", None)  # the SDK's span says which ones the instrumentation set
    for key in URL_ATTRIBUTES:
        if present is None or key in present:  # as the instrumentation writes it: the query percent-decoded
            span.set_attribute(key, redact_url(f"{get_host_port_url_tuple(scope)[2]}?{unquote(redacted)}"))
    for key in QUERY_ATTRIBUTES:
        if present is None or key in present:
            span.set_attribute(key, redacted)


class PhaseSpans:
    """Pure ASGI, inside the instrumentation's server span and `ServerTimingMiddleware`: as the
    response's last body goes out, one child span per recorded phase, with its own start and end."""

    def __init__(self, app, tracer):
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace

        server_span = trace.get_current_span()

        async def send_and_trace(message):
            if message["type"] == "http.response.body" and not message.get("more_body") and \
                    server_span.is_recording():  # the instrumentation ends the server span with the last body
                self._annotate(server_span, scope)
            await send(message)

        await self.app(scope, receive, send_and_trace)

    def _annotate(self, server_span, scope) -> None:
        from opentelemetry import trace

        server_span.set_attribute("enet_serve.request_id", REQUEST_ID.get())
        model = served_model(scope)
        if model:
            server_span.set_attribute("enet_serve.model", model)
        timings = timing.current()
        if timings is not None:
            self._phases(trace.set_span_in_context(server_span), timings)

    def _phases(self, context, timings: timing.RequestTimings) -> None:
        # the intervals are perf_counter seconds; spans want epoch nanoseconds
        offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
        for name, start, end in timings.intervals:
            span = self.tracer.start_span(name, context=context, start_time=offset_ns + int(start * 1e9))
            span.end(end_time=offset_ns + int(end * 1e9))
