"""ResNet (He, Zhang, Ren, Sun 2015): ResNet-18/34 (basic blocks) and ResNet-50/101/152
(bottleneck blocks). State_dict keys and shapes equal torchvision's, and so does the forward.

As in torchvision ("ResNet v1.5"), a bottleneck block downsamples in its 3x3 convolution rather
than in the first 1x1 convolution as in the paper, and projection shortcuts (1x1 conv + BN) are
used only where the shape changes (the paper's option B).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model

_PAPER = ("K. He, X. Zhang, S. Ren, J. Sun, 2015. Deep Residual Learning for Image Recognition, "
          "arXiv:1512.03385")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # for the export's folding (models/folding.py)

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero, so each block as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _reference(top1: float, weights: str) -> dict:
    return {"metric": "top1", "value": top1, "dataset": "ImageNet-1k val",
            "source": f"torchvision weights {weights}.IMAGENET1K_V1"}


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 224x224, batch 1.
@register_model(name="resnet18", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=11_689_512, gflops=3.628,
                reference=_reference(69.758, "ResNet18_Weights"), paper=_PAPER, torchvision_compatible=True)
def resnet18(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, zero_init_residual=zero_init_residual)


@register_model(name="resnet34", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=21_797_672, gflops=7.328,
                reference=_reference(73.314, "ResNet34_Weights"), paper=_PAPER, torchvision_compatible=True)
def resnet34(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, zero_init_residual=zero_init_residual)


@register_model(name="resnet50", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=25_557_032, gflops=8.178,
                reference=_reference(76.130, "ResNet50_Weights"), paper=_PAPER, torchvision_compatible=True)
def resnet50(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, zero_init_residual=zero_init_residual)


@register_model(name="resnet101", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=44_549_160, gflops=15.603,
                reference=_reference(77.374, "ResNet101_Weights"), paper=_PAPER, torchvision_compatible=True)
def resnet101(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, zero_init_residual=zero_init_residual)


@register_model(name="resnet152", **IMAGENET_CLASSIFIER, input_size=(224, 224), params=60_192_808, gflops=23.027,
                reference=_reference(78.312, "ResNet152_Weights"), paper=_PAPER, torchvision_compatible=True)
def resnet152(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, zero_init_residual=zero_init_residual)
