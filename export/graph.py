"""The exported graph: pre-processing + model + post-processing as one nn.Module.

`build_graph_module(model, spec, precision)` wraps a model in `SegmentationGraph` or
`ClassificationGraph`, the module that torch.onnx exports:

- in: `image` uint8 (N, H, W, C), RGB or grayscale, NHWC;
- pre: cast to float32, NHWC -> NCHW, `(x - 255 mean) / (255 std)` (what training's
  `Normalize` does); segmentation graphs zero-pad the normalised image to multiples of
  `spec.size_multiple` (as ENet's own forward does) and crop the mask back, so any H, W work;
- the model, in float32 or float16 (`precision`);
- post: segmentation `mask` uint8 (N, H, W), the argmax over the classes, and `confidence` uint8
  (N, H, W), the top class's softmax probability x 255 (rounded), both cropped and interleaved as
  float and each made by a final Cast (TensorRT's UINT8 rule); classification `probabilities`
  float32 (N, K), the softmax (computed in float32 in FP16 graphs too).

Before export, `swap_for_export` replaces modules by export-time equivalents that compute the
same function with ops onnxruntime runs fast and that every execution provider has, on a copy of
the model (the caller's model, its classes and its state_dict are left alone); the export checks
compare the result with the original model:

- Conv2d -> BatchNorm2d pairs in a Sequential are folded into one convolution (in float32, also
  for FP16 graphs, where the exporter would fold them in float16).
- `nn.PReLU` -> `ExportPReLU` (FP32 graphs): prelu(x) = x + (1 - a) relu(-x) as a depthwise 1x1
  convolution with a fused ReLU and an Add. onnxruntime's CPU provider keeps these in its blocked
  NCHWc layout; PRelu is not an NCHWc op, so every PRelu cost a layout reorder before and after
  on top of its own slow kernel (about 40% of ENet's time). FP16 graphs, meant for GPUs, keep PRelu.
- ENet: the initial block's concat + batch norm as two convolutions summed; a transposed conv +
  batch norm folded; max-pool without indices, the unpooling mask (where each 2x2 window's first
  maximum was, as torch's indices) computed in the encoder from strided slices, and unpooling as
  nearest upsampling times that mask (no MaxPool indices, no MaxUnpool, no int64 index tensors);
  the 2x2/2 full convolution of the head as a 1x1 convolution to 4K channels whose argmax is taken
  per sub-position (`ExportENet.graph_scores`) and the class index interleaved as float
  (`ExportENet.scores_to_image`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from enet_serve.model_config import TASKS
from enet_serve.models.registry import ModelSpec


# --------------------------------------------------------------------------------------------
# Export-time module swaps
# --------------------------------------------------------------------------------------------

class ExportPReLU(nn.Module):
    """PReLU as x + k * relu(-x) with k = 1 - a, on 4-D inputs as depthwise 1x1 convolutions.

    Where every k >= 0 (PReLU slopes a <= 1, the usual case): k relu(-x) = relu(-k x), one
    depthwise convolution with a fused ReLU, then an Add. Otherwise relu(-x) is formed first
    (depthwise -1, ReLU) and scaled by a second depthwise convolution.
    """

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        a = prelu.weight.detach().float().reshape(-1)
        self.num_parameters = a.numel()
        self.register_buffer("slope", a.clone())
        k = 1.0 - a
        self.single_conv = bool((k >= 0).all())
        self.register_buffer("neg_k", (-k).view(-1, 1, 1, 1).clone())
        self.register_buffer("k", k.view(-1, 1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.prelu(x, self.slope.to(x.dtype))
        channels = x.shape[1]
        neg_k, k = self.neg_k.to(x.dtype), self.k.to(x.dtype)
        if self.num_parameters == 1:
            neg_k, k = neg_k.expand(channels, 1, 1, 1), k.expand(channels, 1, 1, 1)
        if self.single_conv:
            return x + F.relu(F.conv2d(x, neg_k, groups=channels))
        minus_one = -torch.ones_like(k)
        return x + F.conv2d(F.relu(F.conv2d(x, minus_one, groups=channels)), k, groups=channels)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as y = x * scale + shift, per channel."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean.detach() * scale


class ExportInitialBlock(nn.Module):
    """ENet's InitialBlock act(bn(cat(conv(x), maxpool(x)))) as act(convA(x) + convB(maxpool(x))): batch norm
    folded into both, each writing its part of the 16 channels (no Concat, no separate BatchNormalization)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        conv = block.conv
        scale, shift = _bn_scale_shift(block.bn)
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


class ExportConvTransposeBN(nn.Module):
    """Sequential(ConvTranspose2d, BatchNorm2d, act...) with the batch norm folded into the transposed conv."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        deconv, bn = seq[0], seq[1]
        scale, shift = _bn_scale_shift(bn)
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
        from enet_serve.models import enet

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
        """(N, C, 4, h, w) per sub-position -> (N, C, 2h, 2w): the 2x2 blocks interleaved into the image."""
        n, c, _, h, w = t.shape
        return t.view(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)


def _fold_conv_bn(model: nn.Module) -> None:
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


def _swap_rules(precision: str):
    """(predicate, replacement factory) pairs, most specific first."""
    from enet_serve.models import enet

    rules = [
        (lambda m: isinstance(m, enet.InitialBlock), ExportInitialBlock),
        (lambda m: isinstance(m, enet.DownsamplingBottleneck), ExportDownsamplingBottleneck),
        (lambda m: isinstance(m, enet.UpsamplingBottleneck), ExportUpsamplingBottleneck),
        (ExportConvTransposeBN.applies, ExportConvTransposeBN),
    ]
    if precision == "fp32":
        rules.append((lambda m: isinstance(m, nn.PReLU), ExportPReLU))
    return rules


def swap_for_export(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """A float32 copy of `model` in eval mode with the export-time equivalents swapped in."""
    model = copy.deepcopy(model).float().eval()
    rules = _swap_rules(precision)

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            for applies, make in rules:
                if applies(child):
                    replacement = make(child)
                    setattr(parent, name, replacement)
                    child = replacement
                    break
            visit(child)

    with torch.no_grad():
        head = ExportENet(model) if ExportENet.applies(model) else None  # reads fullconv before the swaps
        visit(model)
        _fold_conv_bn(model)
    return head if head is not None else model


# --------------------------------------------------------------------------------------------
# Wrappers: pre + model + post
# --------------------------------------------------------------------------------------------

class _Preprocess(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        channels = spec.input_channels
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, channels, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, channels, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes a uint8 tensor only straight into a Cast (export.structure).
        return (image.float().permute(0, 3, 1, 2) - self.mean) / self.std


def top_probability_255(scores: torch.Tensor) -> torch.Tensor:
    """The softmax's largest value over axis 1 times 255, rounded, in float32: 255 / sum(exp(s - max s)).

    float32 also in FP16 graphs (as the classifiers' softmax). Rounded here, so that the final Cast to
    uint8 sees whole numbers and any runtime's Cast (truncating or rounding) gives the same byte; the
    sum is >= 1 (the max's own term), so the value stays within 0..255."""
    s = scores.float()
    return torch.round(255.0 / torch.exp(s - s.amax(1, keepdim=True)).sum(1, keepdim=True))


class SegmentationGraph(nn.Module):
    """uint8 (N, H, W, C) -> mask uint8 (N, H, W), confidence uint8 (N, H, W)."""

    output_names = [o.name for o in TASKS["segment"].outputs]

    def __init__(self, model: nn.Module, spec: ModelSpec, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.pre = _Preprocess(spec)
        self.model = model
        self.multiple = max(1, int(spec.size_multiple))
        self.compute_dtype = compute_dtype

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pre(image)
        h, w = x.shape[2], x.shape[3]
        if self.multiple > 1:
            # Always pad (by zero where the sides are multiples already): one graph for every size.
            pad_h = (self.multiple - h % self.multiple) % self.multiple
            pad_w = (self.multiple - w % self.multiple) % self.multiple
            x = F.pad(x, [0, pad_w, 0, pad_h])
        x = x.to(self.compute_dtype)
        scores = self.model.graph_scores(x) if hasattr(self.model, "graph_scores") else self.model(x)
        # The class index as float (exact up to 2**24) beside the confidence, both whole numbers:
        # interleaved and cropped together, in float; each uint8 output is made by the very last
        # node, a Cast (TensorRT's UINT8 rule, export.structure).
        out = torch.cat([scores.argmax(1, keepdim=True).float(), top_probability_255(scores)], 1)
        if hasattr(self.model, "scores_to_image"):
            out = self.model.scores_to_image(out)
        if self.multiple > 1:
            out = out[:, :, :h, :w]
        return out[:, 0].to(torch.uint8), out[:, 1].to(torch.uint8)

    def graph_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's (N, K, H, W) logits in the layout of the graph's ArgMax input (sides multiples of 8)."""
        return self.model.graph_logits(logits) if hasattr(self.model, "graph_logits") else logits


class ClassificationGraph(nn.Module):
    """uint8 (N, H, W, C) -> probabilities float32 (N, K)."""

    output_names = [o.name for o in TASKS["classify"].outputs]

    def __init__(self, model: nn.Module, spec: ModelSpec, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.pre = _Preprocess(spec)
        self.model = model
        self.compute_dtype = compute_dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.pre(image).to(self.compute_dtype))
        return torch.softmax(logits.float(), dim=1)

    def graph_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def build_graph_module(model: nn.Module, spec: ModelSpec, precision: str = "fp32", swap: bool = True) -> nn.Module:
    """The module to export for `model` at `precision` ("fp32" or "fp16"); `swap=False` exports the
    model as it is (for comparisons)."""
    dtype = PRECISIONS[precision]
    inner = swap_for_export(model, precision) if swap else copy.deepcopy(model).float().eval()
    wrapper = SegmentationGraph if spec.task == "segment" else ClassificationGraph
    return wrapper(inner.to(dtype), spec, compute_dtype=dtype).eval()
