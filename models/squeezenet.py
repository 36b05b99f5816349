"""SqueezeNet 1.0 (Iandola et al. 2016) and 1.1 (the SqueezeNet repository's cheaper revision:
3x3/64 first convolution, earlier pooling). State_dict keys and shapes equal torchvision's."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model

_PAPER = ("F. N. Iandola, S. Han, M. W. Moskewicz, K. Ashraf, W. J. Dally, K. Keutzer, 2016. SqueezeNet: "
          "AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size, arXiv:1602.07360")


class Fire(nn.Module):
    """1x1 squeeze, then parallel 1x1 and 3x3 expands, concatenated; ReLU after each convolution."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    def __init__(self, version: str = "1_0", num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True), _pool(),
                Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), _pool(),
                Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
                _pool(),
                Fire(512, 64, 256, 256),
            )
        elif version == "1_1":
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), _pool(),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), _pool(),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), _pool(),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
            )
        else:
            raise ValueError(f"unsupported SqueezeNet version {version!r}: '1_0' or '1_1' expected")
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 224x224, batch 1.
@register_model(name="squeezenet1_0", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=1_248_424, gflops=1.638,
                reference={"metric": "top1", "value": 58.092, "dataset": "ImageNet-1k val",
                           "source": "torchvision weights SqueezeNet1_0_Weights.IMAGENET1K_V1"},
                paper=_PAPER, torchvision_compatible=True)
def squeezenet1_0(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    return SqueezeNet("1_0", num_classes=num_classes, dropout=dropout)


@register_model(name="squeezenet1_1", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=1_235_496, gflops=0.698,
                reference={"metric": "top1", "value": 58.178, "dataset": "ImageNet-1k val",
                           "source": "torchvision weights SqueezeNet1_1_Weights.IMAGENET1K_V1"},
                paper=_PAPER + "; version 1.1 from github.com/forresti/SqueezeNet (SqueezeNet_v1.1)",
                torchvision_compatible=True)
def squeezenet1_1(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    return SqueezeNet("1_1", num_classes=num_classes, dropout=dropout)
