"""`create_app(settings)`: the FastAPI application, with a lifespan that loads, verifies and warms the models."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from enet_serve.service._version import __version__
from enet_serve.service.api import classify, docs, health, metrics as metrics_api, models, segment, ui, v2
from enet_serve.service.errors import install_error_handlers
from enet_serve.service.metrics import Metrics
from enet_serve.service.server import ModelServer
from enet_serve.service.settings import Settings
from enet_serve.service.timing import ServerTimingMiddleware

log = logging.getLogger("service")

DESCRIPTION = """
Semantic segmentation (ENet) and image classification (the classic CNNs) over HTTP, on onnxruntime
with dynamic batching.

* `POST /segment` and `POST /classify` take the image bytes as the body (`image/jpeg`, `image/png`, ...)
  or `multipart/form-data` with a field `image`.
* Errors are `{"error": {"code", "message"}}`.
* When API keys are configured, send `Authorization: Bearer KEY` or `X-API-Key: KEY`
  (health, metrics and docs need none).
* `/v2/...` is the Open Inference Protocol (KServe v2).
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
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            state = scope.get("state") or {}
            model = state.get("model", "") if isinstance(state, dict) else ""
            self.metrics.requests.labels(model, path, str(status)).inc()
            self.metrics.request_duration.labels(model, path).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server = ModelServer(settings, metrics)
        app.state.server = server
        try:
            await asyncio.to_thread(server.load)
        except BaseException:
            await server.stop()
            raise
        server.start()
        log.info("enet-serve: %d model(s) loaded from %s: %s", len(server.models), settings.repository,
                 ", ".join(f"{n} ({m.runtime.provider}, {m.runtime.precision})" for n, m in server.models.items()))
        try:
            yield
        finally:
            await server.stop()

    # /docs and /redoc are served by api/docs.py from installed files (FastAPI's own link to a CDN)
    app = FastAPI(title="enet-serve", version=__version__, description=DESCRIPTION, openapi_tags=TAGS,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.server = ModelServer(settings, metrics)  # replaced at startup; answers "not ready" before it
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.server_timing:
        app.add_middleware(ServerTimingMiddleware)
    for module in (segment, classify, models, health, metrics_api):
        app.include_router(module.router)
    app.include_router(v2.router)
    app.include_router(v2.secured)
    docs.install(app)
    if settings.demo_page:
        ui.install(app)
    return app
