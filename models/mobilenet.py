"""MobileNet v1 (Howard et al. 2017) and MobileNet v2 (Sandler et al. 2018).

v1 has no torchvision equivalent and follows the paper (Table 1): a 3x3 stride-2 convolution,
13 depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, each with BN and ReLU), global
average pooling and a fully connected layer; width multiplier 1.0, 224x224 input.
v2's state_dict keys and shapes equal torchvision's `mobilenet_v2`, and so does the forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model
from enet_serve.models.weight_init import kaiming_init_


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% down (as torchvision / TF)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNActivation(nn.Sequential):
    """Convolution (no bias, "same" padding), BatchNorm, then the activation if one is given.
    Children 0/1/2 as torchvision's Conv2dNormActivation, so the state_dict keys agree."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.ReLU6) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


# ---------------------------------------------------------------------------------------------- v1

class DepthwiseSeparable(nn.Module):
    """3x3 depthwise convolution (stride s) + BN + ReLU, then 1x1 pointwise convolution + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvBNActivation(in_channels, in_channels, 3, stride, groups=in_channels, activation=nn.ReLU)
        self.pointwise = ConvBNActivation(in_channels, out_channels, 1, activation=nn.ReLU)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


# (output channels, stride) of the 13 depthwise-separable blocks, Table 1 of the paper.
MOBILENET_V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        channels = _make_divisible(32 * width_mult, 8)
        layers: list[nn.Module] = [ConvBNActivation(3, channels, 3, 2, activation=nn.ReLU)]
        for out_channels, stride in MOBILENET_V1_BLOCKS:
            out_channels = _make_divisible(out_channels * width_mult, 8)
            layers.append(DepthwiseSeparable(channels, out_channels, stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(channels, num_classes))
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------------- v2

class InvertedResidual(nn.Module):
    """1x1 expansion (ReLU6), 3x3 depthwise (ReLU6), linear 1x1 projection; residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, not {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# t (expansion), c (channels), n (repeats), s (stride of the first), Table 2 of the paper.
MOBILENET_V2_SETTING: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNActivation(3, input_channel, stride=2)]
        for t, c, n, s in MOBILENET_V2_SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(ConvBNActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 224x224, batch 1.
@register_model(
    name="mobilenet_v1",
    **IMAGENET_CLASSIFIER,
    input_size=(224, 224),
    params=4_231_976,
    gflops=1.137,
    reference={"metric": "top1", "value": 70.6, "dataset": "ImageNet-1k val",
               "source": "paper, Table 8 (1.0 MobileNet-224); no torchvision weights"},
    paper="A. G. Howard, M. Zhu, B. Chen, D. Kalenichenko, W. Wang, T. Weyand, M. Andreetto, H. Adam, 2017. "
    "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications, arXiv:1704.04861",
)
def mobilenet_v1(*, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.0) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, dropout=dropout)


@register_model(
    name="mobilenet_v2",
    **IMAGENET_CLASSIFIER,
    input_size=(224, 224),
    params=3_504_872,
    gflops=0.602,
    reference={"metric": "top1", "value": 71.878, "dataset": "ImageNet-1k val",
               "source": "torchvision weights MobileNet_V2_Weights.IMAGENET1K_V1"},
    paper="M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, 2018. MobileNetV2: Inverted Residuals "
    "and Linear Bottlenecks, arXiv:1801.04381",
    torchvision_compatible=True,
)
def mobilenet_v2(*, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
