"""POST /segment: an image in, its class mask out (JSON with a base64 PNG, the PNG itself, COCO RLE, the
confidence, or an overlay), with the options every format shares (min_confidence, classes, regions)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from enet_serve.service.api.deps import SegmentModelDep, ServerDep, SettingsDep, read_image, require_api_key
from enet_serve.service.schemas import ERROR_RESPONSES, IMAGE_REQUEST_BODY, SegmentResponse, SegmentRleResponse
from enet_serve.service.tasks import SEGMENT_FORMATS, SegmentOptions, SegmentTask

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
        "`format=rle`: COCO compressed RLE (column-major) per class present, which `pycocotools.mask.decode` "
        "reads; `format=confidence`: the top class's probability x 255 as a grey PNG (models with a `confidence` "
        "output); `format=overlay`: the input with the coloured mask blended in (JPEG). "
        "The mask always has the input image's own width and height. In every format, `min_confidence=0.5` "
        "turns pixels the model is less sure of into the void class, and `classes=Road,Car` every other class; "
        "`regions=true` (JSON formats) adds each class's connected regions of at least `min_area` pixels."
    ),
    response_model=SegmentResponse | SegmentRleResponse,  # the JSON formats: json, rle
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                          "image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
              "description": "JSON (format=json: SegmentResponse; format=rle: SegmentRleResponse), the mask PNG (format=png), the "
                             "grey confidence PNG (format=confidence) or the overlay JPEG (format=overlay)"},
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
        None, description="json (default), png, rle, confidence or overlay; png is also chosen by `Accept: image/png`"),
    alpha: float | None = Query(None, ge=0.0, le=1.0, description="overlay: weight of the mask colours (default 0.5)"),
    min_confidence: float | None = Query(
        None, ge=0.0, le=1.0, description="pixels whose confidence is below it become the void class (every format; "
        "models with a `confidence` output, else 422 confidence_unavailable)", examples=[0.5]),
    classes: str | None = Query(
        None, description="comma-separated class names to keep; every other class becomes void (every format) and "
        "class_fractions lists only these; an unknown name is a 422 that lists the model's classes",
        examples=["Road,Car"]),
    regions: bool = Query(False, description="JSON formats: each class's connected regions (class, area, bbox "
                          "[x, y, w, h], centroid [x, y], in the input's pixels)"),
    min_area: int | None = Query(None, ge=1, description="regions: the smallest region in pixels (default: 0.1 % "
                                 "of the image)", examples=[200]),
) -> Response:
    fmt = format or ("png" if _wants_png(request) else "json")
    options = segment_options(model.handler, fmt, alpha=settings.overlay_alpha if alpha is None else alpha,
                              min_confidence=min_confidence, classes=classes, regions=regions, min_area=min_area)
    data = await read_image(request, settings)
    answer = await server.answer(model, data, options)
    return Response(content=answer.body, media_type=answer.media_type, headers={"X-Model": model.name})


def segment_options(handler: SegmentTask, format: str, *, alpha: float, min_confidence: float | None,
                    classes: str | None, regions: bool, min_area: int | None) -> SegmentOptions:
    """The options of one /segment request (or stream) for the model of `handler`; 422 for what it cannot answer."""
    options = SegmentOptions(format=format, alpha=alpha, min_confidence=min_confidence,
                             classes=handler.class_indices(classes) if classes is not None else None,
                             regions=regions, min_area=min_area)
    handler.check(options)
    return options


def _wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept
