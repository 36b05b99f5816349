"""GET /metrics: Prometheus text format (no API key, like /health)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from enet_serve.service.api.deps import ServerDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}})
async def metrics(server: ServerDep) -> Response:
    body, content_type = server.metrics.render()
    return Response(content=body, media_type=content_type)
