"""Batch norms folded into the convolutions in front of them (eval mode): what an exported graph
computes in place of conv + batch norm. Used by the export's generic pass (export.graph) and by the
models' own export forms (models/enet_export.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as y = x * scale + shift, per channel."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean.detach() * scale


def fold_conv_bn(model: nn.Module) -> None:
    """Fold Conv2d -> BatchNorm2d pairs that follow each other in a Sequential (eval mode), in place."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if (type(a) is nn.Conv2d and type(b) is nn.BatchNorm2d and b.track_running_stats
                    and b.running_mean is not None and a.out_channels == b.num_features):
                setattr(module, name_a, torch.nn.utils.fusion.fuse_conv_bn_eval(a, b))
                setattr(module, name_b, nn.Identity())


class ConvTransposeBN(nn.Module):
    """Sequential(ConvTranspose2d, BatchNorm2d, act...) with the batch norm folded into the transposed conv."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        deconv, bn = seq[0], seq[1]
        scale, shift = bn_scale_shift(bn)
        w = deconv.weight.detach() * scale.view(1, -1, 1, 1)  # (Cin, Cout/groups, kh, kw)
        b = shift + (deconv.bias.detach() * scale if deconv.bias is not None else 0)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self.stride, self.padding, self.output_padding = deconv.stride, deconv.padding, deconv.output_padding
        self.groups, self.dilation = deconv.groups, deconv.dilation
        self.rest = nn.Sequential(*list(seq)[2:])

    @staticmethod
    def applies(m: nn.Module) -> bool:
        return (isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[0], nn.ConvTranspose2d)
                and isinstance(m[1], nn.BatchNorm2d) and m[0].padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding,
                               self.output_padding, self.groups, self.dilation)
        return self.rest(y)
