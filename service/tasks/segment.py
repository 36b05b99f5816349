"""Segmentation: the mask (and, from graphs that have it, the confidence) back at the input's size,
answered in one of the registered formats.

A response format is one function registered with `@segment_format(name, media_type)`: it gets a
`SegmentResult` (the mask at the input's size, the decoded request, the options, the model's
palette) and returns the body. `format=` accepts exactly the registered names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from enet_serve.service import codecs
from enet_serve.service import segment_answers as answers
from enet_serve.service.errors import InvalidParameter
from enet_serve.service.metrics import DriftObserver, Metrics
from enet_serve.service.schemas import SegmentResponse, SegmentRleResponse
from enet_serve.service.tasks.base import Answer, Prepared, Task

CONFIDENCE = "confidence"  # the optional second output: the top class's probability x 255


@dataclass(frozen=True)
class SegmentOptions:
    format: str = "json"
    alpha: float = 0.5  # overlay: the weight of the mask colours
    min_confidence: float | None = None  # pixels whose confidence (0..1) is below it become void
    classes: tuple[int, ...] | None = None  # the class indices kept (the others become void); None: all
    regions: bool = False  # JSON bodies: the connected regions
    min_area: int | None = None  # regions: the smallest region in pixels; None: answers.default_min_area


@dataclass
class SegmentResult:
    """What a format encoder gets: one image's answer at the input's own size, the filters applied."""

    task: "SegmentTask"
    prepared: Prepared
    mask: np.ndarray  # HxW class indices at the input's size (min_confidence and classes applied)
    confidence: np.ndarray | None  # HxW uint8 at the input's size, 0 where the filters made a pixel void
    outputs: dict[str, np.ndarray]  # every graph output at the model's size
    options: SegmentOptions

    @property
    def listed(self) -> tuple[int, ...]:
        """The class indices the answer lists: `classes=`, or every class."""
        return self.options.classes if self.options.classes is not None else tuple(range(len(self.task.class_names)))

    def summary(self) -> dict[str, Any]:
        """What every JSON answer (and every stream message) says of the image: model, size, class fractions
        and, from models with a confidence output, the mean confidence per class present."""
        names = self.task.class_names
        counts = answers.class_counts(self.mask, len(names))
        total = max(1, self.mask.size)
        out: dict[str, Any] = {"model": self.task.model, "width": self.prepared.width, "height": self.prepared.height,
                               "class_fractions": {names[c]: round(float(counts[c]) / total, 6) for c in self.listed}}
        if self.confidence is not None:
            means = answers.mean_confidence(self.mask, self.confidence, counts)
            out["mean_confidence"] = {names[c]: round(float(means[c]), 4) for c in self.listed if counts[c]}
        return out

    def regions(self) -> list[dict[str, Any]]:
        """The connected regions of the listed classes (without the void class unless `classes=` names it)."""
        void = self.task.void
        classes = self.listed if self.options.classes is not None else [c for c in self.listed if c != void]
        h, w = self.mask.shape
        min_area = self.options.min_area or answers.default_min_area(h, w)
        names = self.task.class_names
        return [{"class": names[r["index"]], **r} for r in answers.connected_regions(self.mask, classes, min_area)]


@dataclass(frozen=True)
class SegmentFormat:
    name: str
    media_type: str
    encode: Callable[[SegmentResult], bytes]
    needs_original: bool = False  # keep the decoded image (Prepared.original) for it
    needs_confidence: bool = False  # only models with a confidence output can answer it
    json: bool = False  # a JSON object that carries SegmentResult.summary() (and regions=true)


SEGMENT_FORMATS: dict[str, SegmentFormat] = {}


def segment_format(name: str, media_type: str, *, needs_original: bool = False, needs_confidence: bool = False):
    """Register the decorated function as the encoder of `format=name`."""
    def register(fn: Callable[[SegmentResult], bytes]) -> Callable[[SegmentResult], bytes]:
        if name in SEGMENT_FORMATS:
            raise ValueError(f"segmentation format {name!r} is registered twice")
        SEGMENT_FORMATS[name] = SegmentFormat(name, media_type, fn, needs_original, needs_confidence,
                                              json=media_type == "application/json")
        return fn

    return register


def valid_part(output: np.ndarray, prepared: Prepared) -> np.ndarray:
    """An output without the padding of native-size mode (the model's size)."""
    if prepared.valid is not None:
        output = output[: prepared.valid[0], : prepared.valid[1]]
    return output


def mask_at_input_size(mask: np.ndarray, prepared: Prepared) -> np.ndarray:
    """A per-pixel output (mask or confidence) at the input's size: nearest-neighbour, so the confidence
    stays aligned with the mask pixel for pixel."""
    return codecs.resize_mask(valid_part(mask, prepared), prepared.height, prepared.width)


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
        self.void = self.config.void.index if self.config.void is not None else None
        # read by name: graphs exported before the confidence output have only `mask`
        self.confidence_output = CONFIDENCE if any(o.name == CONFIDENCE for o in self.config.outputs) else None
        self.drift: DriftObserver | None = None

    def bind_metrics(self, metrics: Metrics) -> None:
        self.drift = metrics.drift(self.model, self.class_names, confidence=self.confidence_output is not None)

    # -- options -----------------------------------------------------------------------------------------
    def class_indices(self, text: str) -> tuple[int, ...]:
        """`classes=Road,Car` as class indices (names matched without regard to case); 422 naming the
        model's classes for a name it does not have."""
        by_name = {n.lower(): i for i, n in enumerate(self.class_names)}
        wanted = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [w for w in wanted if w.lower() not in by_name]
        if unknown or not wanted:
            what = f"unknown class {', '.join(map(repr, unknown))}" if unknown else "no class named"
            raise InvalidParameter(f"classes: {what} for model {self.model!r}; its classes: "
                                   f"{', '.join(self.class_names)}", code="unknown_class",
                                   details={"classes": self.class_names})
        return tuple(sorted({by_name[w.lower()] for w in wanted}))

    def check(self, options: SegmentOptions) -> None:
        """422 for options this model cannot answer (before any work is done)."""
        fmt = SEGMENT_FORMATS[options.format]
        if self.confidence_output is None and (fmt.needs_confidence or options.min_confidence is not None):
            asked = f"format={fmt.name}" if fmt.needs_confidence else "min_confidence"
            raise InvalidParameter(f"{asked}: model {self.model!r} has no confidence output (its graph predates "
                                   "it: re-export the model)", code="confidence_unavailable")
        if self.void is None and (options.min_confidence is not None or options.classes is not None):
            raise InvalidParameter(f"min_confidence and classes turn pixels into the void class; model {self.model!r} "
                                   "has none (config.json `void`)", code="no_void_class")
        if options.regions and not fmt.json:
            raise InvalidParameter(f"regions=true needs a JSON format ({', '.join(self.json_formats())}), "
                                   f"not format={fmt.name}")

    @staticmethod
    def json_formats() -> list[str]:
        return [f.name for f in SEGMENT_FORMATS.values() if f.json]

    def wants_original(self, options: SegmentOptions) -> bool:
        return SEGMENT_FORMATS[options.format].needs_original

    # -- encode ------------------------------------------------------------------------------------------
    def result(self, prepared: Prepared, outputs: dict[str, np.ndarray], options: SegmentOptions) -> SegmentResult:
        """The mask (and confidence) at the input's size with min_confidence and classes applied; the drift
        metrics observe the model's own answer first."""
        raw_mask = outputs[self.primary_output]
        raw_confidence = outputs.get(self.confidence_output) if self.confidence_output else None
        if self.drift is not None:
            self.drift.observe(valid_part(raw_mask, prepared),
                               None if raw_confidence is None else valid_part(raw_confidence, prepared))
        mask = mask_at_input_size(raw_mask, prepared)
        confidence = None if raw_confidence is None else mask_at_input_size(raw_confidence, prepared)
        voided = None
        if options.min_confidence is not None and confidence is not None:
            voided = answers.below_confidence(confidence, options.min_confidence)
        if options.classes is not None:
            dropped = ~answers.in_classes(mask, options.classes)
            voided = dropped if voided is None else voided | dropped
        if voided is not None:
            assert self.void is not None  # check() refused the filters otherwise
            mask = np.where(voided, np.uint8(self.void), mask)
            if confidence is not None:
                confidence = np.where(voided, np.uint8(0), confidence)
        return SegmentResult(self, prepared, mask, confidence, outputs, options)

    def encode(self, prepared: Prepared, outputs: dict[str, np.ndarray], options: SegmentOptions) -> Answer:
        fmt = SEGMENT_FORMATS[options.format]
        return Answer(fmt.encode(self.result(prepared, outputs, options)), fmt.media_type)

    def encode_stream(self, prepared: Prepared, outputs: dict[str, np.ndarray],
                      options: SegmentOptions) -> tuple[str, bytes | None]:
        """A stream frame's answer: the JSON object (a JSON format's body, else the summary) and, for the
        other formats, their body as a binary message."""
        fmt = SEGMENT_FORMATS[options.format]
        result = self.result(prepared, outputs, options)
        if fmt.json:
            return fmt.encode(result).decode(), None
        return json.dumps(result.summary(), separators=(",", ":")), fmt.encode(result)

    def mask_png(self, mask: np.ndarray) -> bytes:
        return codecs.encode_mask_png(mask, self.palette, self.settings.png_compress_level)

    def describe(self) -> dict[str, Any]:
        void = self.config.void
        return {"colors": [list(c) for c in self.colors], "void": void.model_dump() if void else None,
                "confidence": self.confidence_output is not None}


def _with_regions(r: SegmentResult, body: dict[str, Any]) -> dict[str, Any]:
    if r.options.regions:
        body["regions"] = r.regions()
    return body


@segment_format("json", "application/json")
def _json(r: SegmentResult) -> bytes:
    task = r.task
    body = _with_regions(r, {**r.summary(), "classes": task.class_names, "mask_png": codecs.b64(task.mask_png(r.mask))})
    return SegmentResponse.model_validate(body).model_dump_json(by_alias=True, exclude_none=True).encode()


@segment_format("rle", "application/json")
def _rle(r: SegmentResult) -> bytes:
    """COCO compressed RLE per class present, column-major at the input's size."""
    names = r.task.class_names
    size = list(r.mask.shape)
    rle = [{"class": names[c], "index": c, "size": size, "counts": counts}
           for c, counts in answers.coco_rle(r.mask, r.listed).items()]
    body = _with_regions(r, {**r.summary(), "classes": names, "rle": rle})
    return SegmentRleResponse.model_validate(body).model_dump_json(by_alias=True, exclude_none=True).encode()


@segment_format("png", "image/png")
def _png(r: SegmentResult) -> bytes:
    return r.task.mask_png(r.mask)


@segment_format("confidence", "image/png", needs_confidence=True)
def _confidence(r: SegmentResult) -> bytes:
    """The confidence (top class's probability x 255) as a grey PNG; 0 where the filters made a pixel void."""
    assert r.confidence is not None
    return codecs.encode_grey_png(r.confidence, r.task.settings.png_compress_level)


@segment_format("overlay", "image/jpeg", needs_original=True)
def _overlay(r: SegmentResult) -> bytes:
    image = r.prepared.original
    assert image is not None
    if image.shape[:2] != r.mask.shape:
        image = codecs.resize_image(image, *r.mask.shape)
    return codecs.encode_jpeg(codecs.overlay(image, r.mask, r.task.lut, r.options.alpha))
