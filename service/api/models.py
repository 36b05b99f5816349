"""GET /models, GET /models/{name}: what is loaded and how it runs."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request

from enet_serve.service.api.deps import get_server, require_api_key
from enet_serve.service.schemas import ERROR_RESPONSES, ModelInfo, ModelList

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", summary="List the loaded models", response_model=ModelList,
            responses={401: ERROR_RESPONSES[401]})
async def list_models(request: Request) -> dict:
    server = get_server(request)
    return {
        "models": [m.describe() for _, m in sorted(server.models.items())],
        "defaults": {"segment": server.default_name("segment"), "classify": server.default_name("classify")},
    }


@router.get("/models/{name}", summary="One loaded model", response_model=ModelInfo,
            responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]})
async def get_model(request: Request, name: str = Path(description="model name", examples=["enet-camvid"])) -> dict:
    model = get_server(request).get(name)
    request.state.model = model.name
    return model.describe()
