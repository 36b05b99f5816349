"""Xception (Chollet 2017), for 299x299 inputs; no torchvision equivalent, follows the paper (figure 5).

Entry flow: two 3x3 convolutions (32 stride 2, 64), then three residual blocks of two separable
convolutions and a 3x3 stride-2 max pool (128, 256, 728 channels), with 1x1 stride-2 projection
shortcuts. Middle flow: eight residual blocks of three 728-channel separable convolutions with
identity shortcuts. Exit flow: a residual block (728, 1024, max pool, projection shortcut), then
separable convolutions of 1536 and 2048 channels, global average pooling, dropout (0.5, as in the
paper's ImageNet setup) and the classifier. Every convolution is followed by batch normalisation;
separable convolutions have no ReLU between their depthwise and pointwise parts. Padding is
symmetric (PyTorch), not TensorFlow's "same", so Keras weights would need care to port.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model
from enet_serve.models.weight_init import kaiming_init_


class SeparableConv2d(nn.Module):
    """Depthwise k x k convolution, then pointwise 1x1 convolution; no bias, no activation in between."""

    bn_folds_into = "pointwise"  # a batch norm after it folds into its last convolution (models/folding.py)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """`reps` x (ReLU, separable conv, BN), a 3x3 max pool when strided, plus a shortcut.

    grow_first: the first separable convolution changes the width (entry and middle flow);
    otherwise the last one does (the exit flow's 728 -> 728 -> 1024 block). The first block of the
    entry flow has no leading ReLU, because the stem has just applied one.
    """

    def __init__(self, in_channels: int, out_channels: int, reps: int, stride: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(reps):
            grow = (i == 0) if grow_first else (i == reps - 1)
            out = out_channels if grow else channels
            if i > 0 or start_with_relu:
                # Not in place on the block input: the shortcut reads it too.
                layers.append(nn.ReLU(inplace=i > 0))
            layers += [SeparableConv2d(channels, out), nn.BatchNorm2d(out)]
            channels = out
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
        self.residual = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


def _conv_bn_relu(in_channels: int, out_channels: int, **kwargs) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, bias=False, **kwargs), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


def _sep_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(SeparableConv2d(in_channels, out_channels), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class Xception(nn.Module):
    def __init__(self, num_classes: int = 1000, middle_blocks: int = 8, dropout: float = 0.5,
                 init_weights: bool = True) -> None:
        super().__init__()
        self.entry_flow = nn.Sequential(
            _conv_bn_relu(3, 32, kernel_size=3, stride=2),  # 299 -> 149
            _conv_bn_relu(32, 64, kernel_size=3),  # 147
            XceptionBlock(64, 128, reps=2, stride=2, start_with_relu=False),  # 74
            XceptionBlock(128, 256, reps=2, stride=2),  # 37
            XceptionBlock(256, 728, reps=2, stride=2),  # 19
        )
        self.middle_flow = nn.Sequential(*(XceptionBlock(728, 728, reps=3) for _ in range(middle_blocks)))
        self.exit_flow = nn.Sequential(
            XceptionBlock(728, 1024, reps=2, stride=2, grow_first=False),  # 10
            _sep_bn_relu(1024, 1536),
            _sep_bn_relu(1536, 2048),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        if init_weights:
            kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.exit_flow(self.middle_flow(self.entry_flow(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 299x299, batch 1.
@register_model(
    name="xception",
    **IMAGENET_CLASSIFIER,
    input_size=(299, 299),
    params=22_855_952,
    gflops=16.715,
    reference={"metric": "top1", "value": 79.0, "dataset": "ImageNet-1k val",
               "source": "paper, Table 1 (single crop, 299x299); no torchvision weights"},
    paper="F. Chollet, 2017. Xception: Deep Learning with Depthwise Separable Convolutions, arXiv:1610.02357",
)
def xception(*, num_classes: int = 1000, dropout: float = 0.5, init_weights: bool = True) -> Xception:
    return Xception(num_classes=num_classes, dropout=dropout, init_weights=init_weights)
