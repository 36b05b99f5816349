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
    """Fold each convolution -> BatchNorm2d pair into the convolution (eval mode, in place, in the
    model's dtype: call it on a float32 copy). The pairs are neighbours in a Sequential, and the
    (conv, bn) attribute names a block lists in its class attribute `conv_bn_pairs`, which it declares
    only where its forward computes bn(conv(x)) with nothing in between. A block standing for a
    convolution (e.g. a separable one) names its last Conv2d in `bn_folds_into`."""
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            names = [name for name, _ in module.named_children()]
            pairs = list(zip(names, names[1:]))
        else:  # the class's own declaration: a subclass may have changed the forward
            pairs = type(module).__dict__.get("conv_bn_pairs", ())
        for conv_name, bn_name in pairs:
            owner, conv, bn = module, getattr(module, conv_name), getattr(module, bn_name)
            if type(conv).__dict__.get("bn_folds_into"):
                owner, conv_name = conv, type(conv).__dict__["bn_folds_into"]
                conv = getattr(owner, conv_name)
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and bn.running_mean is not None and conv.out_channels == bn.num_features):
                setattr(owner, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())


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
