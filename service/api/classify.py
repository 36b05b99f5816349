"""POST /classify: an image in, the top-k labels out."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from enet_serve.service.api.deps import get_server, read_image, require_api_key
from enet_serve.service.schemas import ERROR_RESPONSES, IMAGE_REQUEST_BODY, ClassifyResponse

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
    model: str | None = Query(None, description="model name; default: the default classifier",
                              examples=["lenet5-fashion"]),
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return"),
) -> dict:
    server = get_server(request)
    handle = server.ready_model(model, "classify")
    request.state.model = handle.name
    data = await read_image(request)
    return await server.classify(handle, data, top_k)
