"""GET /models, GET /models/{name}: what is loaded and how it runs."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from enet_serve.service.api.deps import ModelDep, ServerDep, require_api_key
from enet_serve.service.schemas import ERROR_RESPONSES, ModelInfo, ModelList
from enet_serve.service.tasks import HANDLERS

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", summary="List the loaded models", response_model=ModelList,
            responses={401: ERROR_RESPONSES[401]})
async def list_models(server: ServerDep) -> dict:
    return {
        "models": [m.describe() for _, m in sorted(server.models.items())],
        "defaults": {task: server.default_name(task) for task in HANDLERS},
        "failed": [fault.describe() for _, fault in sorted(server.faults.items())],
    }


@router.get("/models/{name}", summary="One loaded model", response_model=ModelInfo,
            responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]})
async def get_model(model: ModelDep) -> dict:
    return model.describe()
