"""ENet's first training stage (paper, section 4): the encoder alone, classifying 1/8-size label maps.

The paper trains the encoder first "to categorize downsampled regions of the input image", then
appends the decoder and trains the whole network to upsample and refine. Here the encoder (ENet's
initial block and stages 1-3) gets a 1x1 convolution head for that stage; the head is not part of
the shipped model (the checkpoint keeps it for --resume only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enet_serve.models.enet import ENet, SIZE_MULTIPLE

ENCODER_STRIDE = 8  # the encoder's output is 1/8 of the input on each side


class EncoderHead(nn.Module):
    """Logits of ENet's encoder at 1/8 size: (N, C, H, W) -> (N, classes, ceil(H/8), ceil(W/8))."""

    def __init__(self, model: ENet, num_classes: int):
        super().__init__()
        if not isinstance(model, ENet):
            raise TypeError(f"the encoder stage needs an ENet, not {type(model).__name__}")
        self.classifier = nn.Conv2d(model.down2.expand[0].out_channels, num_classes, 1)
        # not a sub-module: the model's weights are saved with the model, not twice
        self._model = [model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enet = self._model[0]
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % SIZE_MULTIPLE, 0, (-h) % SIZE_MULTIPLE))
        x = enet.initial(x)
        x, _ = enet.down1(x)
        x = enet.stage1(x)
        x, _ = enet.down2(x)
        return self.classifier(enet.stage3(enet.stage2(x)))


def downsample_labels(labels: torch.Tensor, void: int, factor: int = ENCODER_STRIDE) -> torch.Tensor:
    """(N, H, W) class maps -> (N, ceil(H/f), ceil(W/f)): the class at the centre of each f x f cell
    (nearest neighbour, as a label map cannot be averaged); the padding to a multiple of f is void."""
    h, w = labels.shape[-2:]
    padded = F.pad(labels, (0, (-w) % factor, 0, (-h) % factor), value=void)
    return padded[..., factor // 2 :: factor, factor // 2 :: factor]
