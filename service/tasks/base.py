"""What every task handler does: decode an image into the model's input (`prepare`), turn the
model's outputs for it into an answer (`encode`), describe itself for GET /models and the v2
metadata. The request path is decode -> batcher -> encode, as LitServe splits decode/predict/encode;
`ModelServer` runs the two ends in its codec threads and owns everything between them.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from enet_serve.model_config import ModelConfig
from enet_serve.service import codecs
from enet_serve.service.metrics import Metrics
from enet_serve.service.settings import Settings
from enet_serve.service.v2_codec import datatype


@dataclass
class Prepared:
    """A decoded request, ready for the batcher."""

    array: np.ndarray  # model input HxWxC
    key: tuple  # batching key (input shape)
    width: int  # the image's own size
    height: int
    valid: tuple[int, int] | None  # (h, w) of the image inside a padded input (native-size mode)
    original: np.ndarray | None  # the full decoded image (for answers drawn over it)
    decode_s: float


@dataclass(frozen=True)
class Answer:
    body: bytes
    media_type: str


class Task(ABC):
    """The handler of one model of one task; subclasses set the class attributes and `encode`."""

    name: ClassVar[str]  # config.json's `task`
    word: ClassVar[str]  # for people: "a segmentation model"
    route: ClassVar[str]  # the HTTP route of the task
    default_setting: ClassVar[str]  # the Settings field naming the route's model when none is given

    def __init__(self, model: str, config: ModelConfig, settings: Settings):
        self.model = model
        self.config = config
        self.settings = settings
        self.class_names = config.class_names()
        inp = config.input
        self.input_shape = (inp.height, inp.width, inp.channels)
        self.native_size = settings.native_size and inp.dynamic_size
        # Native-size images are padded here (so that sizes within a multiple batch together) in the colour
        # the graph's own padding has: zero after its normalisation, the mean. Edge pixels changed the mask
        # near the padded sides (0.6 % of ENet's pixels at 357x473). Without a recorded mean: the edges.
        norm = config.normalization
        self.pad_colour = (tuple(int(round(255 * m)) for m in norm.mean)
                           if norm is not None and len(norm.mean) == inp.channels else None)

    @property
    def primary_output(self) -> str:
        """The name of the task's first output (the one every graph of the task has)."""
        return self.config.outputs[0].name

    @classmethod
    def default_model(cls, settings: Settings) -> str:
        return getattr(settings, cls.default_setting)

    # -- decode ----------------------------------------------------------------------------------------
    def wants_original(self, options: Any) -> bool:
        """Whether `encode` needs the full decoded image (kept in Prepared.original) for `options`."""
        return False

    def prepare(self, data: bytes, keep_original: bool = False) -> Prepared:
        """Decode `data` and fit it to the model's input: resized to the native size (or, for classifiers
        evaluated on centre crops, `crop_fraction`, resized to cover it and its centre cropped), or, in
        native-size mode, padded to the size multiple."""
        t0 = time.perf_counter()
        height, width, channels = self.input_shape
        max_pixels = self.settings.max_image_pixels
        if self.native_size:
            decoded = codecs.decode_image(data, channels=channels, max_pixels=max_pixels)
            image = decoded.array
            x = codecs.pad_to_multiple(image, self.config.input.size_multiple, self.pad_colour)
            valid = (image.shape[0], image.shape[1])
        else:
            crop = self.config.input.crop_fraction
            # a JPEG may be decoded smaller (DCT scaling), as long as it covers what is resized to
            smallest = (height, width) if crop is None else (-int(-height // crop), -int(-width // crop))
            decoded = codecs.decode_image(data, channels=channels, max_pixels=max_pixels,
                                          min_size=None if keep_original else smallest)
            image = decoded.array
            x = (codecs.resize_image(image, height, width) if crop is None
                 else codecs.resize_center_crop(image, height, width, crop))
            valid = None
        return Prepared(array=x, key=x.shape, width=decoded.width, height=decoded.height, valid=valid,
                        original=image if keep_original else None, decode_s=time.perf_counter() - t0)

    # -- encode ----------------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, prepared: Prepared, outputs: dict[str, np.ndarray], options: Any) -> Answer:
        """The answer to one image from the model's outputs for it (by output name, without the batch axis)."""

    def bind_metrics(self, metrics: Metrics) -> None:
        """Take the metrics this task observes per answer (segmentation: drift), bound to this model."""

    # -- describe --------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What GET /models/{name} shows of this task beyond what every model shows."""
        return {}

    def v2_outputs(self) -> list[dict[str, Any]]:
        """The v2 metadata of the outputs: datatype and shape from config.json (-1 where they vary)."""
        return [{"name": o.name, "datatype": datatype(o.dtype), "shape": self.config.output_shape(o.name)}
                for o in self.config.outputs]
