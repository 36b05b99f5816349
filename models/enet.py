"""ENet: real-time semantic segmentation (Paszke, Chaurasia, Kim, Culurciello 2016, arXiv:1606.02147).

The layout follows Table 1 of the paper: an initial block, five stages of bottlenecks (regular,
downsampling, dilated, asymmetric, upsampling), PReLU in the encoder and ReLU in the decoder,
spatial dropout (0.01 in stage 1, 0.1 after) and a 2x2 full convolution as the head.

The encoder's max-pools keep their indices and the decoder unpools with them (`max_unpool2x`, the
same as `F.max_unpool2d` with plain tensor ops), as in the paper. The exported graph does not use
indices: ENet's export form (models/enet_export.py, named by the spec's `export_form`) finds each
2x2 window's first maximum from strided slices and unpools by nearest upsampling times that mask,
with no MaxUnpool (a CPU-only kernel in onnxruntime) and no int64 index tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enet_serve.models.registry import register_model

# The encoder downsamples three times: sides must be multiples of 8 (others are padded).
SIZE_MULTIPLE = 8


def _activation(relu: bool, channels: int) -> nn.Module:
    return nn.ReLU() if relu else nn.PReLU(channels)


class ConvBNAct(nn.Sequential):
    """Convolution without bias, batch norm, then PReLU (encoder) or ReLU (decoder)."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, dilation=1, relu=False, act=True):
        layers = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(_activation(relu, cout))
        super().__init__(*layers)


class InitialBlock(nn.Module):
    """13 strided 3x3 filters concatenated with a 2x2 max-pool of the input: 16 channels at 1/2 size."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = _activation(relu, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class RegularBottleneck(nn.Module):
    """1x1 projection, a 3x3 (optionally dilated) or 5x1+1x5 asymmetric convolution, 1x1 expansion; residual sum."""

    def __init__(self, channels: int, internal_ratio: int = 4, dilation: int = 1, asymmetric: bool = False,
                 dropout: float = 0.0, relu: bool = False):
        super().__init__()
        internal = channels // internal_ratio
        self.project = ConvBNAct(channels, internal, 1, relu=relu)
        if asymmetric:
            self.conv = nn.Sequential(
                ConvBNAct(internal, internal, (5, 1), padding=(2, 0), relu=relu),
                ConvBNAct(internal, internal, (1, 5), padding=(0, 2), relu=relu),
            )
        else:
            self.conv = ConvBNAct(internal, internal, 3, padding=dilation, dilation=dilation, relu=relu)
        self.expand = ConvBNAct(internal, channels, 1, relu=relu, act=False)
        self.dropout = nn.Dropout2d(dropout)
        self.act = _activation(relu, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.dropout(self.expand(self.conv(self.project(x)))))


class DownsamplingBottleneck(nn.Module):
    """Halves the size: max-pool (keeping indices for the decoder) with zero-padded channels, plus a 2x2/2 branch."""

    def __init__(self, cin: int, cout: int, internal_ratio: int = 4, dropout: float = 0.0, relu: bool = False):
        super().__init__()
        internal = cin // internal_ratio
        self.extra_channels = cout - cin
        self.project = ConvBNAct(cin, internal, 2, stride=2, relu=relu)
        self.conv = ConvBNAct(internal, internal, 3, padding=1, relu=relu)
        self.expand = ConvBNAct(internal, cout, 1, relu=relu, act=False)
        self.dropout = nn.Dropout2d(dropout)
        self.act = _activation(relu, cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra_channels))
        ext = self.dropout(self.expand(self.conv(self.project(x))))
        return self.act(main + ext), indices


def max_unpool2x(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Inverse of a 2x2/2 max-pool: each value goes back to where its maximum was, zeros elsewhere.

    Equivalent to `F.max_unpool2d(x, indices, 2)` for sizes that are multiples of 2, written as
    nearest upsampling + a comparison of the indices with their positions so it exports to ops
    that every onnxruntime execution provider runs.
    """
    n, c, h, w = x.shape
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    up_indices = indices.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    positions = torch.arange(4 * h * w, device=x.device, dtype=indices.dtype).view(1, 1, 2 * h, 2 * w)
    return torch.where(up_indices == positions, up, torch.zeros_like(up))


class UpsamplingBottleneck(nn.Module):
    """Doubles the size: 1x1 conv + unpooling with the encoder's indices, plus a transposed-conv branch."""

    def __init__(self, cin: int, cout: int, internal_ratio: int = 4, dropout: float = 0.0, relu: bool = True):
        super().__init__()
        internal = cin // internal_ratio
        self.main = ConvBNAct(cin, cout, 1, relu=relu, act=False)
        self.project = ConvBNAct(cin, internal, 1, relu=relu)
        self.upconv = nn.Sequential(
            nn.ConvTranspose2d(internal, internal, 2, stride=2, bias=False),
            nn.BatchNorm2d(internal),
            _activation(relu, internal),
        )
        self.expand = ConvBNAct(internal, cout, 1, relu=relu, act=False)
        self.dropout = nn.Dropout2d(dropout)
        self.act = _activation(relu, cout)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        main = max_unpool2x(self.main(x), indices)
        ext = self.dropout(self.expand(self.upconv(self.project(x))))
        return self.act(main + ext)


def _stage23(channels: int, dropout: float, relu: bool) -> nn.Sequential:
    """Stages 2 and 3 after their first bottleneck: regular, dilated 2/4/8/16 and asymmetric 5."""
    cfg = [dict(), dict(dilation=2), dict(asymmetric=True), dict(dilation=4),
           dict(), dict(dilation=8), dict(asymmetric=True), dict(dilation=16)]
    return nn.Sequential(*(RegularBottleneck(channels, dropout=dropout, relu=relu, **c) for c in cfg))


class ENet(nn.Module):
    """ENet for `num_classes` outputs; input (N, C, H, W) float, output logits (N, num_classes, H, W).

    Any H and W are accepted: the input is zero-padded to multiples of 8 and the logits cropped back.
    """

    def __init__(self, num_classes: int = 11, in_channels: int = 3, encoder_relu: bool = False,
                 decoder_relu: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.initial = InitialBlock(in_channels, 16, relu=encoder_relu)
        # Stage 1
        self.down1 = DownsamplingBottleneck(16, 64, dropout=0.01, relu=encoder_relu)
        self.stage1 = nn.Sequential(*(RegularBottleneck(64, dropout=0.01, relu=encoder_relu) for _ in range(4)))
        # Stage 2 and 3
        self.down2 = DownsamplingBottleneck(64, 128, dropout=0.1, relu=encoder_relu)
        self.stage2 = _stage23(128, 0.1, encoder_relu)
        self.stage3 = _stage23(128, 0.1, encoder_relu)
        # Stage 4 and 5: the decoder
        self.up4 = UpsamplingBottleneck(128, 64, dropout=0.1, relu=decoder_relu)
        self.stage4 = nn.Sequential(*(RegularBottleneck(64, dropout=0.1, relu=decoder_relu) for _ in range(2)))
        self.up5 = UpsamplingBottleneck(64, 16, dropout=0.1, relu=decoder_relu)
        self.stage5 = RegularBottleneck(16, dropout=0.1, relu=decoder_relu)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder up to the head: (N, C, H, W) with sides multiples of 8 -> (N, 16, H/2, W/2)."""
        x = self.initial(x)
        x, idx1 = self.down1(x)
        x = self.stage1(x)
        x, idx2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, idx2))
        return self.stage5(self.up5(x, idx1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.fullconv(self.features(x))
        if pad_h or pad_w:
            x = x[..., :h, :w]
        return x


def _export_form(model: ENet) -> nn.Module:
    from enet_serve.models.enet_export import export_form  # it builds on this module's classes

    return export_form(model)


@register_model(
    name="enet",
    task="segment",
    input_size=(360, 480),
    input_channels=3,
    # CamVid mean/std on the 0..1 scale (train split); the graph applies them in-graph.
    mean=(0.3908, 0.4043, 0.4114),
    std=(0.3046, 0.3128, 0.3056),
    labels="camvid",
    num_classes=11,
    params=353_378,
    # torch.utils.flop_counter at 360x480, batch 1 (2 flops per multiply-add, as for every model here)
    gflops=2.486,
    reference={"metric": "mIoU", "value": 51.3, "dataset": "CamVid test (233 images)",
               "source": "ENet paper, Table 4 (class-average IoU)"},
    paper="Paszke, Chaurasia, Kim, Culurciello 2016, ENet: A Deep Neural Network Architecture for "
          "Real-Time Semantic Segmentation, arXiv:1606.02147",
    size_multiple=SIZE_MULTIPLE,
    export_form=_export_form,
)
def enet(num_classes: int = 11, in_channels: int = 3) -> ENet:
    return ENet(num_classes=num_classes, in_channels=in_channels)

