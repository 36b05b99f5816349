"""VGG (Simonyan and Zisserman 2014), configurations A/B/D/E = VGG-11/13/16/19, with and without
batch normalisation. State_dict keys and shapes equal torchvision's."""
from __future__ import annotations

import torch
from torch import nn

from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model
from enet_serve.models.weight_init import kaiming_init_

_PAPER = ("K. Simonyan, A. Zisserman, 2014. Very Deep Convolutional Networks for Large-Scale Image "
          "Recognition, arXiv:1409.1556")

# Output channels of the 3x3 convolutions; "M" is a 2x2 max pool.
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(config: list[int | str], batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg(config: str, batch_norm: bool, num_classes: int, init_weights: bool, dropout: float) -> VGG:
    return VGG(make_features(CONFIGS[config], batch_norm), num_classes=num_classes,
               init_weights=init_weights, dropout=dropout)


def _reference(top1: float, weights: str) -> dict:
    return {"metric": "top1", "value": top1, "dataset": "ImageNet-1k val",
            "source": f"torchvision weights {weights}.IMAGENET1K_V1"}


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 224x224, batch 1.
@register_model(name="vgg11", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=132_863_336, gflops=15.218,
                reference=_reference(69.020, "VGG11_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg11(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("A", False, num_classes, init_weights, dropout)


@register_model(name="vgg11_bn", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=132_868_840, gflops=15.218,
                reference=_reference(70.370, "VGG11_BN_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg11_bn(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("A", True, num_classes, init_weights, dropout)


@register_model(name="vgg13", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=133_047_848, gflops=22.617,
                reference=_reference(69.928, "VGG13_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg13(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("B", False, num_classes, init_weights, dropout)


@register_model(name="vgg13_bn", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=133_053_736, gflops=22.617,
                reference=_reference(71.586, "VGG13_BN_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg13_bn(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("B", True, num_classes, init_weights, dropout)


@register_model(name="vgg16", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=138_357_544, gflops=30.941,
                reference=_reference(71.592, "VGG16_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg16(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("D", False, num_classes, init_weights, dropout)


@register_model(name="vgg16_bn", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=138_365_992, gflops=30.941,
                reference=_reference(73.360, "VGG16_BN_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg16_bn(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("D", True, num_classes, init_weights, dropout)


@register_model(name="vgg19", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=143_667_240, gflops=39.264,
                reference=_reference(72.376, "VGG19_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg19(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("E", False, num_classes, init_weights, dropout)


@register_model(name="vgg19_bn", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=143_678_248, gflops=39.264,
                reference=_reference(74.218, "VGG19_BN_Weights"), paper=_PAPER, torchvision_compatible=True)
def vgg19_bn(*, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5) -> VGG:
    return _vgg("E", True, num_classes, init_weights, dropout)
