"""Weight initialisation shared by several classifier families."""
from __future__ import annotations

from collections.abc import Iterable

import torch
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


@torch.no_grad()
def calibrate_batch_norms_(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every batch norm's running mean and variance to those of its inputs over `batches` (model
    inputs), in place; the model is left in eval mode. Returns how many batch norms there were.

    For random weights: with the initial statistics (mean 0, variance 1) nothing normalises at eval,
    and deep networks' activations shrink layer by layer (random MobileNet v1's logits come out near
    1e-17, below what float16 holds and where float32 kernels differ by their flushing of
    subnormals), so their outputs are noise that no comparison can check."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return len(norms)
