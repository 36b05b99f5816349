"""GoogLeNet / Inception v1 (Szegedy et al. 2014), with torchvision's layout: state_dict keys and
shapes equal torchvision's, and so does the forward.

Like torchvision, every convolution is followed by batch normalisation (the paper predates it), and
the "5x5" branch uses a 3x3 kernel (torchvision issue #906; kept so that torchvision's weights load).
Unlike torchvision's class, `aux_logits` defaults to False: the auxiliary heads only matter when
training, and without them the state_dict is torchvision's minus the `aux1.*`/`aux2.*` keys.
`load_torchvision_state_dict` loads a torchvision checkpoint (which has the aux weights) into a
model without them.

torchvision's IMAGENET1K_V1 weights were ported from TensorFlow and expect inputs scaled to
[-1, 1]; torchvision's `googlenet(weights=...)` therefore sets `transform_input=True`, which
re-maps an ImageNet-normalised input to that range. Pass `transform_input=True` here too when
using those weights.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enet_serve.models.checkpoints import load_state_dict_without_absent_heads
from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model

AUX_HEADS = ("aux1", "aux2")


class GoogLeNetOutputs(NamedTuple):
    logits: Tensor
    aux_logits2: Tensor | None
    aux_logits1: Tensor | None


class BasicConv2d(nn.Module):
    """Convolution (no bias), batch norm (eps 1e-3), ReLU."""

    conv_bn_pairs = (("conv", "bn"),)  # for the export's folding (models/folding.py)

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def imagenet_to_tf_range(x: Tensor) -> Tensor:
    """ImageNet mean/std normalised input -> (x - 0.5) / 0.5 of the 0..1 image, as torchvision's
    `transform_input` (GoogLeNet and Inception v3) for their weights ported from TensorFlow."""
    x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x_ch0, x_ch1, x_ch2), 1)


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> "5x5"; 3x3 max pool -> 1x1), concatenated."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),  # 3x3 as in torchvision (issue #906)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on inception 4a / 4d (training only)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))
        x = self.conv(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x), inplace=True)
        x = self.dropout(x)
        return self.fc2(x)


# (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) of each inception module, Table 1 of the paper.
INCEPTION_CONFIG: dict[str, tuple[int, ...]] = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = False,
                 init_weights: bool = True, dropout: float = 0.2, dropout_aux: float = 0.7) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(*INCEPTION_CONFIG["3a"])
        self.inception3b = Inception(*INCEPTION_CONFIG["3b"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(*INCEPTION_CONFIG["4a"])
        self.inception4b = Inception(*INCEPTION_CONFIG["4b"])
        self.inception4c = Inception(*INCEPTION_CONFIG["4c"])
        self.inception4d = Inception(*INCEPTION_CONFIG["4d"])
        self.inception4e = Inception(*INCEPTION_CONFIG["4e"])
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(*INCEPTION_CONFIG["5a"])
        self.inception5b = Inception(*INCEPTION_CONFIG["5b"])

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        if init_weights:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _transform_input(self, x: Tensor) -> Tensor:
        return imagenet_to_tf_range(x) if self.transform_input else x

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        """Logits; in training mode with aux_logits, GoogLeNetOutputs(logits, aux2, aux1) like torchvision."""
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = torch.flatten(self.avgpool(x), 1)
        x = self.fc(self.dropout(x))
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


def load_torchvision_state_dict(model: GoogLeNet, state_dict: Mapping[str, Tensor]):
    """Load a torchvision GoogLeNet state_dict strictly, dropping the aux-head weights (`aux1.*`,
    `aux2.*`) when `model` was built without them. Returns load_state_dict's result."""
    return load_state_dict_without_absent_heads(model, state_dict, AUX_HEADS)


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 224x224, batch 1.
@register_model(
    name="googlenet",
    **IMAGENET_CLASSIFIER,
    input_size=(224, 224),
    params=6_624_904,
    gflops=2.997,
    reference={"metric": "top1", "value": 69.778, "dataset": "ImageNet-1k val",
               "source": "torchvision weights GoogLeNet_Weights.IMAGENET1K_V1 (with transform_input=True)"},
    paper="C. Szegedy, W. Liu, Y. Jia, P. Sermanet, S. Reed, D. Anguelov, D. Erhan, V. Vanhoucke, "
    "A. Rabinovich, 2014. Going Deeper with Convolutions, arXiv:1409.4842",
    torchvision_compatible=True,
)
def googlenet(*, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = False,
              init_weights: bool = True, dropout: float = 0.2, dropout_aux: float = 0.7) -> GoogLeNet:
    return GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, transform_input=transform_input,
                     init_weights=init_weights, dropout=dropout, dropout_aux=dropout_aux)
