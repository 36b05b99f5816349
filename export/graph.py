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

Before export, `swap_for_export` puts a copy of the model in its export form (the caller's model,
its classes and its state_dict are left alone): modules replaced by equivalents that compute the
same function with ops onnxruntime runs fast and every execution provider has. The export checks
compare the result with the original model.

- The model's own export form, named by its spec (`ModelSpec.export_form`; ENet's is in
  models/enet_export.py: no MaxUnpool, no indices, the head as a 1x1 convolution). Its optional
  hooks: `graph_scores(x)`, the class scores on axis 1 in any layout; `scores_to_image(t)`, that
  layout back to (N, C, H, W); `graph_logits(logits)`, PyTorch's logits in that layout (checks).
- Conv2d -> BatchNorm2d pairs (neighbours in a Sequential, or the pairs a block declares in
  `conv_bn_pairs`: models/folding.py) and ConvTranspose2d -> BatchNorm2d, folded into one convolution
  in float32, also for FP16 graphs, where the exporter's constant folding would fold them in float16.
- CPU graphs (`fp32`) only: `nn.PReLU` -> `ExportPReLU`, prelu(x) = x + (1 - a) relu(-x) as a
  depthwise 1x1 convolution with a fused ReLU and an Add, which onnxruntime's CPU provider keeps in
  its blocked NCHWc layout (PRelu is not an NCHWc op: a layout reorder before and after each; see
  BENCHMARKS.md). GPU graphs (`fp32_gpu`, `fp16`) keep PRelu, one kernel on a GPU.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from enet_serve.model_config import TASKS
from enet_serve.models.folding import ConvTransposeBN, fold_conv_bn
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


def cpu_rewrites_apply(model: nn.Module) -> bool:
    """Whether `model` has what the CPU-only rewrites change (PReLU): only then does a GPU graph
    (`fp32_gpu`) differ from the FP32 one."""
    return any(isinstance(m, nn.PReLU) for m in model.modules())


def swap_for_export(model: nn.Module, spec: ModelSpec, cpu_rewrites: bool = True) -> nn.Module:
    """A float32 copy of `model` in eval mode, in its export form: the spec's own (`spec.export_form`,
    e.g. models/enet_export.py), then the generic rewrites (batch norms folded; PReLU as convolutions
    where `cpu_rewrites`, for graphs that CPUs run)."""
    model = copy.deepcopy(model).float().eval()
    rules = [(ConvTransposeBN.applies, ConvTransposeBN)]
    if cpu_rewrites:
        rules.append((lambda m: isinstance(m, nn.PReLU), ExportPReLU))

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
        if spec.export_form is not None:
            model = spec.export_form(model)
        visit(model)
        fold_conv_bn(model)
    return model


# --------------------------------------------------------------------------------------------
# Wrappers: pre + model + post
# --------------------------------------------------------------------------------------------

class _Preprocess(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes a uint8 tensor only straight into a Cast (export.structure).
        x = image.float()
        n, h, w, c = x.shape
        # Normalised as rows of W x C values against the channel constants repeated W times, then
        # transposed: onnxruntime broadcasts a (C,) constant over NHWC one 3-value span at a time (23x
        # slower), and its layout optimiser moves a leading Transpose past plain element-wise ops into
        # exactly that shape in graphs whose convolutions run NHWC (the INT8 ones); a Reshape stops it.
        rows = x.reshape(n, h, w * c)
        rows = (rows - self.mean.repeat(w)) / self.std.repeat(w)
        return rows.reshape(n, h, w, c).permute(0, 3, 1, 2)


def top_probability_255(scores: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """The softmax's largest value over axis 1 times 255, rounded, in float32: 255 / sum(exp(s - max s)).

    `top` is the index of the largest score (the graph's ArgMax, keepdim): the max is read there
    (GatherElements) rather than reduced over the classes a second time (on CPUs 0.4 against 1 ms for
    ENet at 360x480).

    float32 also in FP16 graphs (as the classifiers' softmax). Rounded here, so that the final Cast to
    uint8 sees whole numbers and any runtime's Cast (truncating or rounding) gives the same byte; the
    sum is >= 1 (the max's own term), so the value stays within 0..255."""
    s = scores.float()
    return torch.round(255.0 / torch.exp(s - s.gather(1, top)).sum(1, keepdim=True))


class SegmentationGraph(nn.Module):
    """uint8 (N, H, W, C) -> mask uint8 (N, H, W), confidence uint8 (N, H, W)."""

    output_names = [o.name for o in TASKS["segment"].outputs]

    def __init__(self, model: nn.Module, spec: ModelSpec, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.pre = _Preprocess(spec)
        self.model = model
        self.multiple = max(1, int(spec.size_multiple))
        self.compute_dtype = compute_dtype

    def _scores(self, image: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.pre(image)
        h, w = x.shape[2], x.shape[3]
        if self.multiple > 1:
            # Always pad (by zero where the sides are multiples already): one graph for every size.
            pad_h = (self.multiple - h % self.multiple) % self.multiple
            pad_w = (self.multiple - w % self.multiple) % self.multiple
            x = F.pad(x, [0, pad_w, 0, pad_h])
        x = x.to(self.compute_dtype)
        return (self.model.graph_scores(x) if hasattr(self.model, "graph_scores") else self.model(x)), h, w

    def scores(self, image: torch.Tensor) -> torch.Tensor:
        """The class scores the graph's ArgMax reads, in the compute dtype (layout: `graph_logits`)."""
        return self._scores(image)[0]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, h, w = self._scores(image)
        # The class index as float (exact up to 2**24) beside the confidence, both whole numbers:
        # interleaved and cropped together, in float; each uint8 output is made by the very last
        # node, a Cast (TensorRT's UINT8 rule, export.structure).
        top = scores.argmax(1, keepdim=True)
        out = torch.cat([top.float(), top_probability_255(scores, top)], 1)
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

    def scores(self, image: torch.Tensor) -> torch.Tensor:
        """The logits the graph's Softmax reads, in the compute dtype."""
        return self.model(self.pre(image).to(self.compute_dtype))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scores(image).float(), dim=1)

    def graph_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


# The graphs export writes, by config.json file key: (compute dtype, CPU-only rewrites).
GRAPHS = {"fp32": (torch.float32, True), "fp32_gpu": (torch.float32, False), "fp16": (torch.float16, False)}


def build_graph_module(model: nn.Module, spec: ModelSpec, precision: str = "fp32", swap: bool = True) -> nn.Module:
    """The module to export for `model` as graph `precision` (a key of GRAPHS: "fp32" for CPUs,
    "fp32_gpu" and "fp16" for GPUs); `swap=False` exports the model as it is (for comparisons)."""
    dtype, cpu_rewrites = GRAPHS[precision]
    inner = swap_for_export(model, spec, cpu_rewrites) if swap else copy.deepcopy(model).float().eval()
    wrapper = SegmentationGraph if spec.task == "segment" else ClassificationGraph
    return wrapper(inner.to(dtype), spec, compute_dtype=dtype).eval()
