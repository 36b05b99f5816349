"""Network in Network (Lin, Chen, Yan 2013), the ImageNet model of the Caffe model zoo
("nin_imagenet", gist mavenlin/d802a5849de39225bcc6).

Four mlpconv blocks: a spatial convolution followed by two 1x1 convolutions ("cccp"), each
with ReLU; max pooling after the first three (Caffe's ceil rounding, so 224 -> 54 -> 27 -> 13
-> 6); dropout before the last block, whose final 1x1 convolution has one map per class; then
global average pooling gives the logits (no fully connected layer).
"""
from __future__ import annotations

import torch
from torch import nn

from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model
from enet_serve.models.weight_init import kaiming_init_


class MlpConv(nn.Sequential):
    """One mlpconv block: k x k convolution, then two 1x1 convolutions (a per-pixel MLP), ReLU after each."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int], kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        c1, c2, c3 = channels
        super().__init__(
            nn.Conv2d(in_channels, c1, kernel_size, stride=stride, padding=padding),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, kernel_size=1),
            nn.ReLU(inplace=True),
        )


class NIN(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, init_weights: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            MlpConv(3, (96, 96, 96), kernel_size=11, stride=4),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            MlpConv(96, (256, 256, 256), kernel_size=5, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            MlpConv(256, (384, 384, 384), kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            nn.Dropout(p=dropout),
            MlpConv(384, (1024, 1024, num_classes), kernel_size=3, padding=1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        if init_weights:
            kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        return torch.flatten(x, 1)


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 224x224, batch 1.
@register_model(
    name="nin",
    **IMAGENET_CLASSIFIER,
    input_size=(224, 224),
    params=7_595_176,
    gflops=2.200,
    reference={"metric": "top1", "value": 59.36, "dataset": "ImageNet-1k val",
               "source": "Caffe model zoo nin_imagenet (M. Lin, gist d802a5849de39225bcc6), center crop; "
               "not from the paper, which reports CIFAR/SVHN/MNIST only"},
    paper="M. Lin, Q. Chen, S. Yan, 2013. Network In Network, arXiv:1312.4400",
)
def nin(*, num_classes: int = 1000, dropout: float = 0.5, init_weights: bool = True) -> NIN:
    return NIN(num_classes=num_classes, dropout=dropout, init_weights=init_weights)
