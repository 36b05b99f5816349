"""Weight initialisation shared by several classifier families."""
from __future__ import annotations

from torch import nn


def kaiming_init_(model: nn.Module) -> None:
    """torchvision's VGG / MobileNet initialisation, in place: convolutions Kaiming-normal (fan_out,
    ReLU gain) with zero bias, batch norms the identity (weight 1, bias 0), linear layers N(0, 0.01)
    with zero bias. Other modules keep PyTorch's default initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
