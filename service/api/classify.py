"""POST /classify: an image in, the top-k labels out."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from enet_serve.service.api.deps import ClassifyModelDep, ServerDep, SettingsDep, read_image, require_api_key
from enet_serve.service.schemas import ERROR_RESPONSES, IMAGE_REQUEST_BODY, ClassifyResponse
from enet_serve.service.tasks import ClassifyOptions

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])


@router.post(
    "/classify",
    summary="Classify an image",
    description="The `top_k` most probable labels of the image in the body (raw bytes or multipart field `image`), "
                "sorted by score. Images of another size are resized to the model's input size.",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_REQUEST_BODY,
)
async def classify(
    request: Request,
    server: ServerDep,
    settings: SettingsDep,
    model: ClassifyModelDep,
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return"),
) -> Response:
    data = await read_image(request, settings)
    answer = await server.answer(model, data, ClassifyOptions(top_k=top_k))
    return Response(content=answer.body, media_type=answer.media_type)
