"""POST /segment: an image in, its class mask out (JSON with a base64 PNG, the PNG itself, or an overlay)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from enet_serve.service.api.deps import get_server, read_image, require_api_key
from enet_serve.service.schemas import ERROR_RESPONSES, IMAGE_REQUEST_BODY, SegmentResponse

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])


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
    model: str | None = Query(None, description="model name; default: the default segmentation model",
                              examples=["enet-camvid"]),
    format: Literal["json", "png", "overlay"] | None = Query(
        None, description="json (default), png, or overlay; png is also chosen by `Accept: image/png`"),
    alpha: float | None = Query(None, ge=0.0, le=1.0, description="overlay: weight of the mask colours (default 0.5)"),
) -> Response:
    server = get_server(request)
    handle = server.ready_model(model, "segment")
    request.state.model = handle.name
    fmt = format or ("png" if _wants_png(request) else "json")
    data = await read_image(request)
    body, media_type = await server.segment(handle, data, fmt,
                                            server.settings.overlay_alpha if alpha is None else alpha)
    return Response(content=body, media_type=media_type, headers={"X-Model": handle.name})


def _wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept
