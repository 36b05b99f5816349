"""POST /segment: an image in, its class mask out (JSON with a base64 PNG, the PNG itself, or an overlay)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from enet_serve.service.api.deps import SegmentModelDep, ServerDep, SettingsDep, read_image, require_api_key
from enet_serve.service.schemas import ERROR_RESPONSES, IMAGE_REQUEST_BODY, SegmentResponse
from enet_serve.service.tasks import SEGMENT_FORMATS, SegmentOptions

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])

# format= takes exactly the registered formats (service/tasks/segment.py).
Format = Literal[tuple(SEGMENT_FORMATS)]  # type: ignore[valid-type]


@router.post(
    "/segment",
    summary="Segment an image",
    description=(
        "Per-pixel class labels for the image in the body (raw bytes or multipart field `image`). "
        "`format=json` (default): the mask as a base64 palette PNG plus per-class pixel fractions; "
        "`format=png` (or `Accept: image/png`): the palette PNG itself, pixel value = class index; "
        "`format=overlay`: the input with the coloured mask blended in (JPEG). "
        "The mask always has the input image's own width and height."
    ),
    response_model=SegmentResponse,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                          "image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
              "description": "JSON (format=json), the mask PNG (format=png) or the overlay JPEG (format=overlay)"},
        **ERROR_RESPONSES,
    },
    openapi_extra=IMAGE_REQUEST_BODY,
)
async def segment(
    request: Request,
    server: ServerDep,
    settings: SettingsDep,
    model: SegmentModelDep,
    format: Format | None = Query(
        None, description="json (default), png, or overlay; png is also chosen by `Accept: image/png`"),
    alpha: float | None = Query(None, ge=0.0, le=1.0, description="overlay: weight of the mask colours (default 0.5)"),
) -> Response:
    options = SegmentOptions(format=format or ("png" if _wants_png(request) else "json"),
                             alpha=settings.overlay_alpha if alpha is None else alpha)
    data = await read_image(request, settings)
    answer = await server.answer(model, data, options)
    return Response(content=answer.body, media_type=answer.media_type, headers={"X-Model": model.name})


def _wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept
