"""`create_app(settings)`: the FastAPI application, with a lifespan that loads, verifies and warms the models."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from enet_serve.service._version import __version__
from enet_serve.service.api import classify, docs, health, metrics as metrics_api, models, segment, stream, ui, v2
from enet_serve.service.api.deps import served_model
from enet_serve.service.errors import install_error_handlers
from enet_serve.service.inflight import CLIENT_GONE, InflightMiddleware
from enet_serve.service.lifecycle import Lifecycle
from enet_serve.service.metrics import Metrics
from enet_serve.service.openapi import install_openapi
from enet_serve.service.request_id import RequestIdMiddleware
from enet_serve.service.server import ModelServer
from enet_serve.service.settings import Settings
from enet_serve.service.timing import ServerTimingMiddleware
from enet_serve.service.tracing import install_tracing

log = logging.getLogger("service")

DESCRIPTION = """
Semantic segmentation (ENet) and image classification (the classic CNNs) over HTTP, on onnxruntime
with dynamic batching.

* `POST /segment` and `POST /classify` take the image bytes as the body (`image/jpeg`, `image/png`, ...)
  or `multipart/form-data` with a field `image`.
* Errors are `{"error": {"code", "message"}}`. Every response carries an `X-Request-ID` (the request's own, or a
  new one), also written on the server's log lines of that request.
* When API keys are configured, send `Authorization: Bearer KEY` or `X-API-Key: KEY`
  (health, metrics and docs need none).
* `/v2/...` is the Open Inference Protocol (KServe v2).
* `WS /segment/stream` (not listed below: OpenAPI has no WebSockets) takes video frames as binary
  messages with /segment's query parameters and answers the newest frame; see the README.
* Every response carries `Server-Timing`: decode, queue, infer, encode and total, in ms.
* `GET /` is a demo page for people: upload an image, see the mask or the top 5.
"""

TAGS = [
    {"name": "inference", "description": "segment and classify images"},
    {"name": "models", "description": "what is loaded, on which provider and precision"},
    {"name": "health", "description": "liveness and readiness probes"},
    {"name": "metrics", "description": "Prometheus metrics"},
    {"name": "v2 (Open Inference Protocol)", "description": "KServe v2 / Triton-compatible HTTP API"},
]


class MetricsMiddleware:
    """Counts and times every HTTP request by model, route template and status (pure ASGI: cheap)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if scope.get(CLIENT_GONE):
                status = 499  # nginx's "client closed request": nothing was sent
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            model = served_model(scope)
            self.metrics.requests.labels(model, path, str(status)).inc()
            self.metrics.request_duration.labels(model, path).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The app; `lifecycle` is shared with the process runner (service/drain.py) that drains it."""
    settings = settings or Settings()
    metrics = Metrics()
    lifecycle = lifecycle or Lifecycle()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server = ModelServer(settings, metrics, lifecycle)
        app.state.server = server
        try:
            await asyncio.to_thread(server.load)
        except BaseException:
            await server.stop()
            raise
        server.start()
        log.info("enet-serve: %d model(s) loaded from %s: %s%s", len(server.models), settings.repository,
                 ", ".join(f"{n} ({m.runtime.provider}, {m.runtime.precision})" for n, m in server.models.items()),
                 f"; failed: {', '.join(server.faults)}" if server.faults else "")
        try:
            yield
        finally:
            await server.stop()
            if app.state.tracing is not None:
                await asyncio.to_thread(app.state.tracing.shutdown)  # flushes the spans still batched

    # /docs and /redoc are served by api/docs.py from installed files (FastAPI's own link to a CDN)
    app = FastAPI(title="enet-serve", version=__version__, description=DESCRIPTION, openapi_tags=TAGS,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.stream_connections = stream.StreamConnections(settings.stream_max_connections)
    app.state.lifecycle = lifecycle
    app.state.server = ModelServer(settings, metrics, lifecycle)  # replaced at startup; "not ready" before it
    install_error_handlers(app)
    # outermost last: request id (on every response) > Server-Timing (> trace phases) > metrics (every status
    # counted) > in-flight limits
    app.add_middleware(InflightMiddleware, settings=settings, lifecycle=lifecycle)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.tracing = install_tracing(app, settings)  # its phase spans read what ServerTimingMiddleware records
    if settings.server_timing or app.state.tracing is not None:
        app.add_middleware(ServerTimingMiddleware, header=settings.server_timing)
    app.add_middleware(RequestIdMiddleware)
    for module in (segment, classify, models, health, metrics_api):
        app.include_router(module.router)
    app.include_router(stream.router)
    app.include_router(v2.router)
    app.include_router(v2.secured)
    docs.install(app)
    if settings.demo_page:
        ui.install(app)
    install_openapi(app, secured=bool(settings.api_keys))
    return app
