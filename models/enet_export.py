"""ENet's export form: the same function as `models.enet.ENet`, written with ops that every onnxruntime
execution provider (and TensorRT) runs, for `export.graph` to wrap and export. The ENet spec names it
(`ModelSpec.export_form`), so ENet's attributes are read here, beside ENet, and nowhere in export/.

- the initial block's concat + batch norm as two convolutions summed (no Concat, no BatchNormalization);
- max-pool without indices; the unpooling mask (where each 2x2 window's first maximum was, as torch's
  indices) computed in the encoder from strided slices (`first_max_mask_2x2`), and unpooling as
  nearest upsampling times that mask (`unpool_2x`): no MaxPool indices, no MaxUnpool (a CPU-only
  kernel in onnxruntime), no int64 index tensors;
- the 2x2/2 full convolution of the head as a 1x1 convolution to 4K channels, so the graph's argmax
  runs per sub-position on (N, K, 4, H/2, W/2) (`ExportENet.graph_scores`) and only its result is
  interleaved into the image (`ExportENet.scores_to_image`).

The generic rewrites (conv + batch norm folding, PReLU for CPUs) are export.graph's, applied after.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enet_serve.models import enet
from enet_serve.models.folding import bn_scale_shift


class ExportInitialBlock(nn.Module):
    """ENet's InitialBlock act(bn(cat(conv(x), maxpool(x)))) as act(convA(x) + convB(maxpool(x))): batch norm
    folded into both, each writing its part of the 16 channels (no Concat, no separate BatchNormalization)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        conv = block.conv
        scale, shift = bn_scale_shift(block.bn)
        n_conv, cin = conv.out_channels, conv.in_channels
        cout = scale.numel()
        wa = torch.zeros(cout, cin, *conv.kernel_size)
        wa[:n_conv] = conv.weight.detach() * scale[:n_conv].view(-1, 1, 1, 1)
        wb = torch.zeros(cout, cin, 1, 1)
        for c in range(cin):
            wb[n_conv + c, c] = scale[n_conv + c]
        self.register_buffer("weight_a", wa)
        self.register_buffer("bias_a", shift.clone())
        self.register_buffer("weight_b", wb)
        self.stride, self.padding = conv.stride, conv.padding
        self.pool = block.pool
        self.act = block.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.conv2d(x, self.weight_a.to(x.dtype), self.bias_a.to(x.dtype), stride=self.stride, padding=self.padding)
        return self.act(a + F.conv2d(self.pool(x), self.weight_b.to(x.dtype)))


def _window_position(h: torch.Tensor | int, w: torch.Tensor | int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 1, h, w): the position 0..3 of each pixel inside its 2x2 window, row-major."""
    pattern = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=dtype, device=device)
    return pattern.repeat(h // 2, w // 2).view(1, 1, h, w)


class _Window2x2(torch.autograd.Function):
    """x[:, :, i::2, j::2] exported as one Slice over both axes (the tracer writes one Slice per axis)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, i: int, j: int) -> torch.Tensor:  # noqa: ARG004
        return x[:, :, i::2, j::2]

    @staticmethod
    def symbolic(g, x, i: int, j: int):
        const = lambda values: g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))  # noqa: E731
        return g.op("Slice", x, const([i, j]), const([2**62, 2**62]), const([2, 3]), const([2, 2]))


def first_max_mask_2x2(x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """0/1 tensor of x's shape: 1 where each 2x2/2 window's maximum is, the first in row-major order on
    ties (as torch's max_pool2d indices), 0 elsewhere. `pooled` is max_pool2d(x, 2).

    k, the window position of the first maximum, is lt0 * (1 + lt1 * (1 + lt2)) with lt_i = [v_i < max]
    for the window's values v_0..v_2 in row-major order (exact small integers in any float type);
    the mask is nearest-upsampled k == each pixel's own position. Ties are common at ENet's first
    pooling (flat image regions give equal values in a window), so they must go where PyTorch puts them.
    """
    # Compared in float32 also in FP16 graphs (a no-op in FP32 ones): a GPU runtime picks each layer's
    # precision itself, and float32 copies of float16 values compare exactly whatever it picks
    # (export.structure.inexact_comparisons checks it).
    x32, pooled32 = x.float(), pooled.float()
    lt = [(_Window2x2.apply(x32, i, j) < pooled32).float() for i, j in ((0, 0), (0, 1), (1, 0))]
    k = lt[0] * (1 + lt[1] * (1 + lt[2]))
    position = _window_position(x.shape[2], x.shape[3], torch.float32, x.device)
    return (F.interpolate(k, scale_factor=2.0, mode="nearest") == position).to(x.dtype)


def unpool_2x(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """max_unpool2d(x, indices, 2) given the encoder's first-max mask: nearest 2x upsampling times the mask."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest") * mask


class ExportDownsamplingBottleneck(nn.Module):
    """ENet's DownsamplingBottleneck; returns the unpooling mask instead of max-pool indices, and adds the
    pooled main branch through a 1x1 identity convolution instead of zero-padding its channels."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.project, self.conv, self.expand = block.project, block.conv, block.expand
        self.act = block.act
        cout = block.expand[0].out_channels
        cin = cout - block.extra_channels
        eye = torch.zeros(cout, cin, 1, 1)
        eye[torch.arange(cin), torch.arange(cin)] = 1.0
        self.register_buffer("widen", eye)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main = F.max_pool2d(x, 2, stride=2)
        mask = first_max_mask_2x2(x, main)
        main = F.conv2d(main, self.widen.to(x.dtype))
        ext = self.expand(self.conv(self.project(x)))
        return self.act(main + ext), mask


class ExportUpsamplingBottleneck(nn.Module):
    """ENet's UpsamplingBottleneck, unpooling with the mask of `ExportDownsamplingBottleneck`."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.main, self.project, self.upconv, self.expand = block.main, block.project, block.upconv, block.expand
        self.act = block.act

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        main = unpool_2x(self.main(x), mask)
        ext = self.expand(self.upconv(self.project(x)))
        return self.act(main + ext)


class ExportENet(nn.Module):
    """ENet's forward on the swapped submodules, with `graph_scores`: the class scores straight from the
    last layer. The 2x2/2 full convolution is a 1x1 convolution to K*4 channels; the argmax runs per
    sub-position on those (N, K, 4, h, w) and only the uint8 result is interleaved to (N, H, W)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        deconv = net.fullconv
        w = deconv.weight.detach()  # (Cin, K, 2, 2)
        cin, k = w.shape[0], w.shape[1]
        # channel o*4 + i*2 + j of the 1x1 conv = class o at sub-position (i, j)
        self.register_buffer("head_weight", w.permute(1, 2, 3, 0).reshape(k * 4, cin, 1, 1).contiguous())
        self.register_buffer("head_bias", deconv.bias.detach().repeat_interleave(4) if deconv.bias is not None
                             else torch.zeros(k * 4))
        self.num_classes = k

    @staticmethod
    def applies(m: nn.Module) -> bool:
        d = getattr(m, "fullconv", None)
        return (isinstance(m, enet.ENet) and isinstance(d, nn.ConvTranspose2d) and d.kernel_size == (2, 2)
                and d.stride == (2, 2) and d.padding == (0, 0) and d.output_padding == (0, 0) and d.groups == 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)  # the swapped export modules, in ENet's own order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fullconv(self.features(x))

    @staticmethod
    def graph_logits(logits: torch.Tensor) -> torch.Tensor:
        """PyTorch's (N, K, H, W) logits in the layout the graph's ArgMax sees: (N, K, 4, H/2, W/2)."""
        n, k, h, w = logits.shape
        return logits.reshape(n, k, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, k, 4, h // 2, w // 2)

    def graph_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) with H, W multiples of 8 -> class scores (N, K, 4, H/2, W/2): the 1x1 head, one score
        per class and sub-position of each 2x2 output block."""
        y = F.conv2d(self.features(x), self.head_weight.to(x.dtype), self.head_bias.to(x.dtype))
        n, _, h, w = y.shape
        return y.view(n, self.num_classes, 4, h, w)

    @staticmethod
    def scores_to_image(t: torch.Tensor) -> torch.Tensor:
        """(N, C, 4, h, w) per sub-position -> (N, C, 2h, 2w): the 2x2 blocks interleaved into the image.

        Sub-position i*2 + j of channel c is pixel_shuffle's channel c*4 + i*2 + j: one DepthToSpace
        node (0.4 ms for ENet's two output planes at 360x480 on CPUs, where a 6-D Transpose took 1.3)."""
        n, c, _, h, w = t.shape
        return F.pixel_shuffle(t.reshape(n, c * 4, h, w), 2)


def export_form(model: enet.ENet) -> nn.Module:
    """ENet's export form, made from `model` (a float32 eval copy that this may change): its blocks
    swapped for the export blocks above, wrapped in `ExportENet`."""
    if not ExportENet.applies(model):
        raise ValueError(f"no export form for this {type(model).__name__}: its head is not a 2x2/2 "
                         "transposed convolution")
    head = ExportENet(model)  # reads fullconv before the swaps
    swaps = {enet.InitialBlock: ExportInitialBlock, enet.DownsamplingBottleneck: ExportDownsamplingBottleneck,
             enet.UpsamplingBottleneck: ExportUpsamplingBottleneck}

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            make = swaps.get(type(child))
            if make is not None:
                setattr(parent, name, make(child))
            else:
                visit(child)

    with torch.no_grad():
        visit(model)
    return head
