"""The registry of architectures: one `ModelSpec` per name, filled by `@register_model`.

The API follows torchvision's: `list_models(task=None)`, `get_model(name, **kwargs)`,
`get_spec(name)`. A spec keeps the facts about an architecture beside its builder
(task, native input, normalisation, labels, size, cost, reference accuracy, paper),
so the CLI table, the exporter and the tests read them from one place.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal

from torch import nn

Task = Literal["classify", "segment"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int]  # native (height, width)
    input_channels: int  # 3 for RGB, 1 for grayscale
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    labels: str  # label set in models/labels: "imagenet1k", "camvid", "fashion_mnist"
    num_classes: int
    params: int  # parameter count with `num_classes` outputs
    gflops: float  # forward GFLOPs at the native size, batch 1 (torch.utils.flop_counter)
    reference: dict  # published accuracy, e.g. {"metric": "top1", "value": 69.758, "dataset": "ImageNet-1k val", "source": "torchvision"}
    paper: str
    torchvision_compatible: bool = False  # state_dict keys and shapes equal torchvision's
    size_multiple: int = 1  # input sides must be multiples of this (segmentation models pad to it)
    # The model's export form: (float32 eval copy, which it may change) -> the module export wraps;
    # None: the model as it is. Written beside the model (e.g. models/enet_export.py).
    export_form: Callable[[nn.Module], nn.Module] | None = None
    # The reference accuracy's evaluation crop: the shorter side resized to input_size / crop_fraction, then
    # the centre input_size taken (torchvision's Resize(256) + CenterCrop(224): 0.875). None: the whole image.
    crop_fraction: float | None = None


# Spec fields shared by the ImageNet-1k classifiers: `@register_model(name=..., **IMAGENET_CLASSIFIER, ...)`.
IMAGENET_CLASSIFIER = dict(task="classify", input_channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                           labels="imagenet1k", num_classes=1000, crop_fraction=224 / 256)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(**spec_fields) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator for a builder function: `@register_model(name="resnet18", task=..., ...)`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = spec_fields["name"]
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(builder=builder, **spec_fields)
        return builder

    return decorate


def list_models(task: Task | None = None) -> list[str]:
    """Sorted names of the registered architectures, optionally only those of one task."""
    return sorted(n for n, s in _REGISTRY.items() if task is None or s.task == task)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def get_model(name: str, **kwargs) -> nn.Module:
    """Build architecture `name` with random weights; kwargs go to its builder (e.g. num_classes)."""
    return get_spec(name).builder(**kwargs)
