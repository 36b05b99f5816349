"""GET /health/live and /health/ready (no API key: for the orchestrator's probes)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from enet_serve.service.api.deps import ServerDep
from enet_serve.service.errors import error_body
from enet_serve.service.schemas import ERROR_RESPONSES, Health

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="Liveness: the process answers", response_model=Health)
async def live() -> dict:
    return {"status": "live"}


@router.get("/health/ready", summary="Readiness: every model is loaded and warm", response_model=Health,
            responses={503: ERROR_RESPONSES[503]})
async def ready(server: ServerDep):
    state = server.readiness()
    if state.ready:
        return {"status": "ready", "models": state.models, "failed": state.failed}
    body = error_body("not_ready", state.reason or "not ready")
    body["models"] = state.models
    body["failed"] = state.failed
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
