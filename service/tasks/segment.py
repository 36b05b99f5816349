"""Segmentation: the mask (and, from graphs that have it, the confidence) back at the input's size,
answered in one of the registered formats.

A response format is one function registered with `@segment_format(name, media_type)`: it gets a
`SegmentResult` (the mask at the input's size, the decoded request, the options, the model's
palette) and returns the body. `format=` accepts exactly the registered names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from enet_serve.service import codecs
from enet_serve.service.schemas import SegmentResponse
from enet_serve.service.tasks.base import Answer, Prepared, Task


@dataclass(frozen=True)
class SegmentOptions:
    format: str = "json"
    alpha: float = 0.5  # overlay: the weight of the mask colours


@dataclass
class SegmentResult:
    """What a format encoder gets: one image's answer at the input's own size."""

    task: "SegmentTask"
    prepared: Prepared
    mask: np.ndarray  # HxW class indices at the input's size
    outputs: dict[str, np.ndarray]  # every graph output at the model's size (e.g. "confidence")
    options: SegmentOptions


@dataclass(frozen=True)
class SegmentFormat:
    name: str
    media_type: str
    encode: Callable[[SegmentResult], bytes]
    needs_original: bool = False  # keep the decoded image (Prepared.original) for it


SEGMENT_FORMATS: dict[str, SegmentFormat] = {}


def segment_format(name: str, media_type: str, *, needs_original: bool = False):
    """Register the decorated function as the encoder of `format=name`."""
    def register(fn: Callable[[SegmentResult], bytes]) -> Callable[[SegmentResult], bytes]:
        if name in SEGMENT_FORMATS:
            raise ValueError(f"segmentation format {name!r} is registered twice")
        SEGMENT_FORMATS[name] = SegmentFormat(name, media_type, fn, needs_original)
        return fn

    return register


def mask_at_input_size(mask: np.ndarray, prepared: Prepared) -> np.ndarray:
    if prepared.valid is not None:
        mask = mask[: prepared.valid[0], : prepared.valid[1]]
    return codecs.resize_mask(mask, prepared.height, prepared.width)


class SegmentTask(Task):
    name: ClassVar[str] = "segment"
    word: ClassVar[str] = "segmentation"
    route: ClassVar[str] = "/segment"
    default_setting: ClassVar[str] = "default_segment_model"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        colors = self.config.palette()
        self.colors = colors
        self.palette = codecs.palette_bytes(colors)
        self.lut = codecs.color_lut(colors)

    def wants_original(self, options: SegmentOptions) -> bool:
        return SEGMENT_FORMATS[options.format].needs_original

    def encode(self, prepared: Prepared, outputs: dict[str, np.ndarray], options: SegmentOptions) -> Answer:
        fmt = SEGMENT_FORMATS[options.format]
        mask = mask_at_input_size(outputs[self.primary_output], prepared)
        return Answer(fmt.encode(SegmentResult(self, prepared, mask, outputs, options)), fmt.media_type)

    def mask_png(self, mask: np.ndarray) -> bytes:
        return codecs.encode_mask_png(mask, self.palette, self.settings.png_compress_level)

    def describe(self) -> dict[str, Any]:
        void = self.config.void
        return {"colors": [list(c) for c in self.colors], "void": void.model_dump() if void else None}


@segment_format("json", "application/json")
def _json(r: SegmentResult) -> bytes:
    task = r.task
    return SegmentResponse(
        model=task.model,
        width=r.prepared.width,
        height=r.prepared.height,
        classes=task.class_names,
        mask_png=codecs.b64(task.mask_png(r.mask)),
        class_fractions=codecs.class_fractions(r.mask, task.class_names),
    ).model_dump_json().encode()


@segment_format("png", "image/png")
def _png(r: SegmentResult) -> bytes:
    return r.task.mask_png(r.mask)


@segment_format("overlay", "image/jpeg", needs_original=True)
def _overlay(r: SegmentResult) -> bytes:
    image = r.prepared.original
    assert image is not None
    if image.shape[:2] != r.mask.shape:
        image = codecs.resize_image(image, *r.mask.shape)
    return codecs.encode_jpeg(codecs.overlay(image, r.mask, r.task.lut, r.options.alpha))
