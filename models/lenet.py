"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998), for 32x32 grayscale images.

C1 conv 5x5 (6 maps) -> S2 2x2 average subsampling -> C3 conv 5x5 (16) -> S4 subsampling
-> C5 conv 5x5 (120, a 1x1 map on a 32x32 input) -> F6 fully connected (84) -> output,
with tanh squashing. Departures from the paper, as in most modern renditions: C3 connects to
all six S2 maps (the paper's sparse connection table gives 1,516 C3 weights instead of 2,416),
S2/S4 are plain average pools (no trainable coefficient and bias per map), the squashing
function is plain tanh (not 1.7159 tanh(2a/3)), and the output layer is linear (logits for
a softmax/cross-entropy) instead of Euclidean RBF units.
"""
from __future__ import annotations

import torch
from torch import nn

from enet_serve.models.registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # C1: 32 -> 28
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),  # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 -> 10
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),  # S4: 10 -> 5
            nn.Conv2d(16, 120, kernel_size=5),  # C5: 5 -> 1
            nn.Tanh(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(120, 84),  # F6
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# gflops everywhere in models/: torch.utils.flop_counter.FlopCounterMode total / 1e9 at the native
# size, batch 1; it counts convolutions and matrix products only, 2 flops per multiply-add.
@register_model(
    name="lenet5",
    task="classify",
    input_size=(32, 32),
    input_channels=1,
    mean=(0.2860,),
    std=(0.3530,),
    labels="fashion_mnist",
    num_classes=10,
    params=61_706,
    gflops=0.000833,
    reference={
        "metric": "top1",
        "value": 91.23,
        "dataset": "Fashion-MNIST test",
        "source": "this project's models/weights/lenet5-fashion.pth (enet-serve train lenet5-fashion, 60 epochs)",
    },
    paper="Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, 1998. Gradient-Based Learning Applied to Document "
    "Recognition. Proc. IEEE 86(11):2278-2324 (no arXiv id). Paper: LeNet-5 0.95% test error on MNIST "
    "(0.8% with distorted training data); the Fashion-MNIST number above is this project's target.",
)
def lenet5(*, num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
