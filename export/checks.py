"""The checks an export must pass before anything is written to the repository.

On the file alone (`structure_checks`, run on every export, --no-check too):
- contract: input `image` uint8 [N, H, W, C] (H, W dynamic for segmentation), the outputs of the
  task table (model_config.TASKS): `mask` and `confidence` uint8 [N, H, W], or `probabilities`
  float32 [N, K];
- op set: only default-domain ONNX ops, none on `DENY_OPS` (ops that onnxruntime runs on CPU only);
- TensorRT's UINT8 rule, and in FP16 graphs comparisons on float32 only (export.structure).

Against PyTorch (`run_checks`, FP32 and FP32 GPU graphs at FP32 tolerances):
- FP32 vs PyTorch: >= 99% of the logits in front of the graph's ArgMax / Softmax within 0.1% of
  the largest |logit| of the model's (unpooling near-ties move a few, see FP32_LOGITS_WITHIN), and the classes agree on
  >= 99.9% of pixels / samples (real images where the weights are trained: CamVid
  val for CamVid models, Fashion-MNIST test for Fashion-MNIST models; random images otherwise);
- segmentation confidence: FP32 within 1 of round(255 x PyTorch's softmax max) on >= 99.9% of pixels;
- FP16 vs FP32: no NaN or Inf, classes agree on >= 99%, >= 99% of logits within 2% of the largest,
  classifiers' probabilities within 0.02 on >= 99% of samples (values held for trained weights only),
  confidence within 4 on >= 99.5% of pixels; and the FP16 module in PyTorch's float16 kernels (no NaN
  or Inf, classes agree on >= 99%), since onnxruntime's CPU provider computes FP16 graphs in float32;
- batch 1 and batch 8 run and give the same answers; segmentation graphs also at a size that is not
  a multiple of `size_multiple` (padded and cropped in the graph).

A class that differs from PyTorch's only where PyTorch's own top logits are within the numerical
tolerance of each other (a tie) is not counted as a disagreement; the plain agreement is reported too.
Any failure raises `ExportCheckError` with a one-line message.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from enet_serve.export.errors import ExportCheckError
from enet_serve.export.structure import count_ops, inexact_comparisons, uint8_rule_violations
from enet_serve.model_config import TASKS
from enet_serve.models.registry import ModelSpec
from enet_serve.training.common import Normalize, to_native_size
from enet_serve.training.datasets import DEFAULT_CAMVID, DEFAULT_FASHION_MNIST, read_idx

# The parity checks of trained weights run on the training data sets, read by training/'s readers.
CAMVID_DIR = DEFAULT_CAMVID
FASHION_MNIST_DIR = DEFAULT_FASHION_MNIST

# Ops without a CUDA kernel in onnxruntime (they would run on the CPU, with copies to and from the
# GPU around them, or not at all under TensorRT). MaxUnpool is the one ENet's decoder would need.
DENY_OPS = {
    "MaxUnpool": "CPU-only kernel in onnxruntime",
    "Col2Im": "CPU-only kernel in onnxruntime",
    "LpPool": "CPU-only kernel in onnxruntime",
    "MaxRoiPool": "CPU-only kernel in onnxruntime",
    "ConvInteger": "CPU-only kernel in onnxruntime",
    "Unique": "CPU-only kernel in onnxruntime",
    "StringNormalizer": "CPU-only kernel in onnxruntime",
    "TfIdfVectorizer": "CPU-only kernel in onnxruntime",
    "STFT": "CPU-only kernel in onnxruntime",
    "MelWeightMatrix": "CPU-only kernel in onnxruntime",
    "ImageDecoder": "CPU-only kernel in onnxruntime",
}

FP32_AGREEMENT = 0.999
# Share of the FP32 logits that must be within FP32_LOGIT_RTOL of PyTorch's. Not 0.999: ENet's
# unpooling puts a value where its 2x2 window's maximum was, and where the top two are within
# rounding (BN folded, other kernels) the two frameworks pick different positions. The trained
# enet-camvid has such near-ties (top two within 1e-6) in 12 % of its second pooling's windows, and
# 0.4 % of its logits move (97 % of those at a near-tie), with 99.9997 % of its val masks equal.
FP32_LOGITS_WITHIN = 0.99
FP16_AGREEMENT = 0.99
FP32_LOGIT_RTOL = 1e-3  # of the largest |logit|
FP16_LOGIT_RTOL = 2e-2
FP16_LOGITS_WITHIN = 0.99  # share of FP16's scores within FP16_LOGIT_RTOL of PyTorch FP32's
FP16_PROBABILITY_ATOL = 2e-2  # classification: per class, against FP32's probabilities
# Segmentation `confidence` (0..255). Measured with the trained enet-camvid (8 CamVid val images / 8
# random images) and a random-weights ENet: FP32 is within 1 unit of round(255 x PyTorch's softmax
# max) on 99.987% / 100% / 100% of pixels (the misses are where unpooling near-ties moved logits, as
# above), so 99.9% leaves a tenfold margin. FP16 against FP32 is within 4 units on 99.91% / 99.74% /
# 100% (within 2: 99.71% / 99.39%); the rest sit at class boundaries, where the top two logits are
# within float16's rounding and the network's half-precision error moves the maximum (up to 38
# units there). 4 units (1.6% of the scale) on 99.5% of pixels keeps a twofold margin on the worst.
FP32_CONFIDENCE_UNITS, FP32_CONFIDENCE_WITHIN = 1, 0.999
FP16_CONFIDENCE_UNITS, FP16_CONFIDENCE_WITHIN = 4, 0.995
PARITY_BATCH = 8
CAMVID_IMAGES = 8
FASHION_MNIST_IMAGES = 1000
RANDOM_IMAGES = {"segment": 8, "classify": 16}


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'} {self.name}: {self.detail}"


@dataclasses.dataclass
class Graph:
    """One exported graph to check: its file, its precision and the module it was exported from."""
    precision: str
    path: Path
    module: nn.Module


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

def _resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 NHWC -> NHWC at `size`, by training's resize (the service's)."""
    return to_native_size(images.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).contiguous()


def _camvid_val(spec: ModelSpec, count: int) -> torch.Tensor | None:
    listing = CAMVID_DIR / "val.txt"
    if not listing.is_file():
        return None
    from PIL import Image

    names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    picks = np.linspace(0, len(names) - 1, num=min(count, len(names))).round().astype(int)
    images = [np.asarray(Image.open(CAMVID_DIR / names[i]).convert("RGB")) for i in picks]
    if len({im.shape for im in images}) != 1:
        return None
    return _resize_uint8(torch.from_numpy(np.stack(images)), spec.input_size)


def _fashion_mnist_test(spec: ModelSpec, count: int) -> torch.Tensor | None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"):
        path = FASHION_MNIST_DIR / name
        if path.is_file():
            images = torch.from_numpy(read_idx(path)[:count].copy()).unsqueeze(-1)  # (N, 28, 28, 1)
            return _resize_uint8(images, spec.input_size)
    return None


def parity_inputs(spec: ModelSpec, trained: bool) -> tuple[torch.Tensor, str]:
    """uint8 NHWC images for the parity checks, and where they come from."""
    images = None
    if trained and spec.input_channels == 3 and spec.labels == "camvid":
        images, source = _camvid_val(spec, CAMVID_IMAGES), f"CamVid val ({CAMVID_IMAGES} images)"
    elif trained and spec.input_channels == 1 and spec.labels == "fashion_mnist":
        images, source = _fashion_mnist_test(spec, FASHION_MNIST_IMAGES), f"Fashion-MNIST test ({FASHION_MNIST_IMAGES} images)"
    if images is None:
        n = RANDOM_IMAGES[spec.task]
        g = torch.Generator().manual_seed(0)
        h, w = spec.input_size
        images = torch.randint(0, 256, (n, h, w, spec.input_channels), dtype=torch.uint8, generator=g)
        source = f"random images ({n})" + (" - no dataset found" if trained else "")
    return images, source


# --------------------------------------------------------------------------------------------
# Running things
# --------------------------------------------------------------------------------------------

def normalise(images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 NHWC -> the float NCHW input PyTorch models take (training's normalisation)."""
    return Normalize(spec)(images.permute(0, 3, 1, 2))


@torch.no_grad()
def torch_logits(model: nn.Module, images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalise(images[i:i + PARITY_BATCH], spec)).float()
                      for i in range(0, len(images), PARITY_BATCH)])


def providers_for(precision: str) -> list[str]:
    """CPU for FP32 (what the service runs on CPUs); FP16 on CUDA when this onnxruntime has it."""
    if precision == "fp16" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(model: onnx.ModelProto | Path, precision: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.intra_op_num_threads = 1  # the checks need answers, not speed; one thread keeps a busy machine usable
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, so, providers=providers_for(precision))


def scores_tensor(model: onnx.ModelProto, task: str) -> str | None:
    """The graph's class scores: the input of its last ArgMax (segment) / Softmax (classify)."""
    op = "ArgMax" if task == "segment" else "Softmax"
    nodes = [n for n in model.graph.node if n.op_type == op]
    return nodes[-1].input[0] if nodes else None


def with_logits_output(model: onnx.ModelProto, task: str) -> onnx.ModelProto | None:
    """A copy of `model` that also outputs its class scores (`scores_tensor`)."""
    name = scores_tensor(model, task)
    if name is None:
        return None
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [vi for vi in inferred.graph.value_info if vi.name == name]
    if not infos:
        return None
    extended = copy.deepcopy(model)
    extended.graph.output.append(infos[0])
    return extended


def run(session: ort.InferenceSession, images: torch.Tensor, batch: int = PARITY_BATCH) -> list[np.ndarray]:
    """All outputs of `session` over `images` in batches, concatenated."""
    outs: list[list[np.ndarray]] = []
    name = session.get_inputs()[0].name
    for i in range(0, len(images), batch):
        outs.append(session.run(None, {name: images[i:i + batch].numpy()}))
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def classes_of(output: np.ndarray, task: str) -> torch.Tensor:
    return torch.from_numpy(output.astype(np.int64) if task == "segment" else output.argmax(1))


def agreement(classes: torch.Tensor, reference_logits: torch.Tensor, tol: float) -> tuple[float, float]:
    """(plain, decisive) agreement of `classes` with the argmax of `reference_logits` (class axis 1).

    Decisive: a different class counts as agreeing where the reference logit of that class is within
    `tol` of the reference's top logit (a tie at this precision)."""
    ref_classes = reference_logits.argmax(1)
    plain = (classes == ref_classes).float().mean().item()
    top = reference_logits.max(1).values
    chosen = reference_logits.gather(1, classes.unsqueeze(1)).squeeze(1)
    decisive = ((classes == ref_classes) | (top - chosen <= tol)).float().mean().item()
    return plain, decisive


# --------------------------------------------------------------------------------------------
# Checks on the ONNX file alone
# --------------------------------------------------------------------------------------------

def _summary(problems: list[str], limit: int = 3) -> str:
    return "; ".join(problems[:limit]) + (f" (+{len(problems) - limit} more)" if len(problems) > limit else "")


ONNX_DTYPES = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.INT64: "int64"}


def check_contract(model: onnx.ModelProto, spec: ModelSpec, num_classes: int, label: str) -> CheckResult:
    """Input `image` uint8 [N, H, W, C]; the outputs of the task table (model_config.TASKS), in order."""
    inputs, outputs = model.graph.input, model.graph.output
    problems = []
    if len(inputs) != 1 or inputs[0].name != "image":
        problems.append(f"inputs {[i.name for i in inputs]}, expected ['image']")
    else:
        t = inputs[0].type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        if t.elem_type != onnx.TensorProto.UINT8:
            problems.append(f"image is {onnx.TensorProto.DataType.Name(t.elem_type)}, not UINT8")
        dynamic = [0, 1, 2] if TASKS[spec.task].dynamic_size else [0]
        if len(dims) != 4 or dims[3] != spec.input_channels or any(not isinstance(dims[i], str) for i in dynamic):
            sides = "H, W" if TASKS[spec.task].dynamic_size else "%d, %d" % spec.input_size
            problems.append(f"image shape {dims}, expected [N, {sides}, {spec.input_channels}]")
    expected = TASKS[spec.task].outputs
    got = [(o.name, ONNX_DTYPES.get(o.type.tensor_type.elem_type, str(o.type.tensor_type.elem_type)),
            len(o.type.tensor_type.shape.dim)) for o in outputs]
    want = [(o.name, o.dtype, len(o.shape)) for o in expected]
    if got != want:
        problems.append(f"outputs (name, dtype, rank) {got}, expected {want}")
    shapes = ", ".join(f"{o.name} {o.dtype} [{','.join(map(str, o.config_shape(num_classes)))}]" for o in expected)
    detail = "; ".join(problems) or f"image uint8 [N,{'H,W' if TASKS[spec.task].dynamic_size else '%d,%d' % spec.input_size}," \
                                    f"{spec.input_channels}] -> {shapes}"
    return CheckResult(f"{label} contract", not problems, detail)


def check_ops(model: onnx.ModelProto, label: str) -> CheckResult:
    """Only default-domain ops, none on DENY_OPS."""
    ops = {(n.domain or "ai.onnx", n.op_type) for n in model.graph.node}
    denied = sorted(f"{op} ({DENY_OPS[op]})" for domain, op in ops if op in DENY_OPS)
    foreign = sorted(f"{domain}::{op}" for domain, op in ops if domain not in ("ai.onnx", ""))
    bad = denied + [f"{f} (not a default-domain op)" for f in foreign]
    detail = ("ops without a CUDA kernel: " + ", ".join(bad)) if bad else \
        f"{len(model.graph.node)} nodes, {len(ops)} op types, none on the deny-list"
    return CheckResult(f"{label} op set", not bad, detail)


def check_uint8_rule(model: onnx.ModelProto, label: str) -> CheckResult:
    """TensorRT's UINT8 rule (export.structure): uint8 only as the input or an output, next to a Cast."""
    problems = uint8_rule_violations(model)
    return CheckResult(f"{label} uint8 rule", not problems, _summary(problems) or
                       "uint8 only at the input and the outputs, each next to a Cast from or to float")


def check_exact_comparisons(model: onnx.ModelProto, label: str) -> CheckResult:
    """FP16 graphs: comparisons (ENet's first-maximum unpooling mask) read float32 (export.structure)."""
    problems = inexact_comparisons(model)
    n = count_ops(model, ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"))
    return CheckResult(f"{label} exact comparisons", not problems,
                       _summary(problems) or f"{n} comparison nodes, all on float32 inputs")


def structure_checks(model: onnx.ModelProto, spec: ModelSpec, num_classes: int, precision: str) -> list[CheckResult]:
    """The checks that need only the file: cheap, run on every export (also without --check)."""
    label = label_of(precision)
    results = [check_contract(model, spec, num_classes, label), check_ops(model, label),
               check_uint8_rule(model, label)]
    if precision == "fp16":
        results.append(check_exact_comparisons(model, label))
    return results


# --------------------------------------------------------------------------------------------
# Checks against PyTorch
# --------------------------------------------------------------------------------------------

FP32_KINDS = ("fp32", "fp32_gpu")  # compared with PyTorch at FP32 tolerances


def logit_scale(logits: torch.Tensor) -> float:
    return max(logits.abs().max().item(), torch.finfo(torch.float32).tiny)


def label_of(precision: str) -> str:
    return precision.upper().replace("_", " ")


@dataclasses.dataclass
class Reference:
    """PyTorch's answers on the parity images."""
    images: torch.Tensor  # uint8 NHWC
    logits: torch.Tensor  # (N, K, ...) float32
    source: str
    trained: bool = True

    @property
    def scale(self) -> float:
        """The largest |logit|: tolerances are relative to it. No floor: random-init MobileNets' logits
        span 1e-17..1e-4, and a floor at 1 made every check of theirs pass whatever the graph computed."""
        return logit_scale(self.logits)

    def confidence(self) -> np.ndarray:
        """The top class's softmax probability x 255, rounded (what a segmentation graph's `confidence` is)."""
        return (torch.softmax(self.logits, 1).amax(1) * 255).round().numpy()


@dataclasses.dataclass
class GraphRun:
    """One graph's outputs on the parity images, and the logits in front of its ArgMax / Softmax."""
    precision: str
    session: ort.InferenceSession
    outputs: list[np.ndarray]  # the graph's outputs in order
    logits: np.ndarray | None  # None where the graph has no ArgMax / Softmax to look behind
    graph_logits: np.ndarray | None  # PyTorch's logits in the layout of `logits`
    task: str

    @property
    def label(self) -> str:
        return label_of(self.precision)

    @property
    def classes(self) -> torch.Tensor:
        return classes_of(self.outputs[0], self.task)

    @property
    def confidence(self) -> np.ndarray | None:
        return self.outputs[1].astype(np.int32) if self.task == "segment" and len(self.outputs) > 1 else None


def run_graph(g: Graph, proto: onnx.ModelProto, ref: Reference, task: str) -> GraphRun:
    """Open `g` in onnxruntime and run it on the parity images (through a copy that also outputs the
    logits in front of its ArgMax / Softmax; the shipped graph itself runs in `check_batches`)."""
    try:
        session = open_session(g.path, g.precision)
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime raises, the graph does not load
        raise ExportCheckError(f"check failed: {label_of(g.precision)} graph does not load in onnxruntime: "
                               f"{str(e).splitlines()[0][:300]}") from None
    logits_model = with_logits_output(proto, task)
    if logits_model is None:
        return GraphRun(g.precision, session, run(session, ref.images), None, None, task)
    outs = run(open_session(logits_model, g.precision), ref.images)
    return GraphRun(g.precision, session, outs[:-1], outs[-1].astype(np.float32),
                    g.module.graph_logits(ref.logits).numpy(), task)


def check_output_shapes(r: GraphRun, ref: Reference, num_classes: int) -> CheckResult:
    n = len(ref.images)
    expected = (n, *ref.images.shape[1:3]) if r.task == "segment" else (n, num_classes)
    shapes = [o.shape for o in r.outputs]
    ok = all(s == expected for s in shapes)
    return CheckResult(f"{r.label} output shapes", ok, f"{shapes}, expected {expected} each")


def _compare_logits(r: GraphRun, ref: Reference, name: str, rtol: float, need: float) -> CheckResult:
    """The share of the logits in front of the ArgMax / Softmax within `rtol` x the largest |logit| of
    PyTorch FP32's, held to `need`."""
    if r.logits is None:
        return CheckResult(name, True, "no ArgMax / Softmax to look behind; classes compared instead")
    if r.logits.shape != r.graph_logits.shape:
        return CheckResult(name, False, f"shape {r.logits.shape} vs PyTorch {r.graph_logits.shape}")
    diff = np.abs(r.logits - r.graph_logits)
    tol = rtol * ref.scale
    within = float((diff <= tol).mean())
    return CheckResult(name, within >= need,
                       f"{100 * within:.3f}% within {tol:.1e} of PyTorch FP32's (max |logit| {ref.scale:.3g}; "
                       f"max |diff| {diff.max():.2e}, mean {diff.mean():.1e}; need {100 * need:.0f}%)")


def check_logits(r: GraphRun, ref: Reference) -> CheckResult:
    """FP32: the bulk of the logits within FP32_LOGIT_RTOL. Max-unpooling moves a value where a 2x2
    window's top two are within rounding of each other, so a few logits may differ a lot."""
    return _compare_logits(r, ref, f"{r.label} logits vs PyTorch", FP32_LOGIT_RTOL, FP32_LOGITS_WITHIN)


def check_fp32_classes(r: GraphRun, ref: Reference) -> CheckResult:
    plain, decisive = agreement(r.classes, ref.logits, FP32_LOGIT_RTOL * ref.scale)
    what = "pixels" if r.task == "segment" else "samples"
    return CheckResult(f"{r.label} classes vs PyTorch", decisive >= FP32_AGREEMENT,
                       f"{100 * decisive:.3f}% of {what} agree ({100 * plain:.3f}% strictly; "
                       f"need {100 * FP32_AGREEMENT:.1f}%)")


def check_fp32_confidence(r: GraphRun, ref: Reference) -> CheckResult:
    """Segmentation: `confidence` within FP32_CONFIDENCE_UNITS of PyTorch's softmax maximum x 255."""
    diff = np.abs(r.confidence - ref.confidence())
    within = float((diff <= FP32_CONFIDENCE_UNITS).mean())
    return CheckResult(f"{r.label} confidence vs PyTorch", within >= FP32_CONFIDENCE_WITHIN,
                       f"{100 * within:.3f}% of pixels within {FP32_CONFIDENCE_UNITS} of round(255 x softmax max) "
                       f"(max |diff| {int(diff.max())}; need {100 * FP32_CONFIDENCE_WITHIN:.1f}%)")


def check_finite(r: GraphRun) -> CheckResult:
    bad = None
    if r.logits is not None and not np.isfinite(r.logits).all():
        bad = f"{int((~np.isfinite(r.logits)).sum())} NaN/Inf logits"
    if r.task == "classify" and not np.isfinite(r.outputs[0]).all():
        bad = f"{int((~np.isfinite(r.outputs[0])).sum())} NaN/Inf probabilities"
    return CheckResult(f"{r.label} finite", bad is None, bad or "no NaN or Inf")


def check_fp16_classes(r: GraphRun, ref: Reference, fp32: GraphRun | None) -> CheckResult:
    plain, decisive = agreement(r.classes, ref.logits, FP16_LOGIT_RTOL * ref.scale)
    vs32 = ""
    if fp32 is not None:
        vs32 = f"; {100 * (r.classes == fp32.classes).float().mean().item():.3f}% equal to FP32's"
    return CheckResult(f"{r.label} classes vs FP32", decisive >= FP16_AGREEMENT,
                       f"{100 * decisive:.3f}% agree with PyTorch FP32 ({100 * plain:.3f}% strictly{vs32}; "
                       f"need {100 * FP16_AGREEMENT:.0f}%)")


def check_fp16_confidence(r: GraphRun, ref: Reference, fp32: GraphRun | None) -> CheckResult:
    """Segmentation: FP16's `confidence` within FP16_CONFIDENCE_UNITS of FP32's (of PyTorch's without one)."""
    against, what = (fp32.confidence, "FP32's") if fp32 is not None else (ref.confidence(), "PyTorch's")
    diff = np.abs(r.confidence - against)
    within = float((diff <= FP16_CONFIDENCE_UNITS).mean())
    return CheckResult(f"{r.label} confidence vs FP32", within >= FP16_CONFIDENCE_WITHIN,
                       f"{100 * within:.3f}% of pixels within {FP16_CONFIDENCE_UNITS} of {what} (mean |diff| "
                       f"{diff.mean():.2f}, max {int(diff.max())}; need {100 * FP16_CONFIDENCE_WITHIN:.1f}%)")


def check_fp16_logits(r: GraphRun, ref: Reference) -> CheckResult:
    """FP16: the bulk of the logits within FP16_LOGIT_RTOL (the classes alone would pass a graph that
    scales or shifts every score alike)."""
    c = _compare_logits(r, ref, f"{r.label} logits vs FP32", FP16_LOGIT_RTOL, FP16_LOGITS_WITHIN)
    return _fp16_value_check(c.name, c.passed, c.detail, ref)


def _fp16_value_check(name: str, passed: bool, detail: str, ref: Reference) -> CheckResult:
    """FP16's values against FP32's, held for trained weights only: untrained networks amplify float16's
    rounding far more (random Inception v3: 76 % of logits within tolerance, the same in PyTorch's own
    float16), and their classes are still held to FP32's."""
    if not passed and not ref.trained:
        return CheckResult(name, True, detail.replace("need", "random weights, not held to"))
    return CheckResult(name, passed, detail)


def check_fp16_probabilities(r: GraphRun, ref: Reference, fp32: GraphRun | None) -> CheckResult:
    """Classification: FP16's probabilities (what /classify answers with) within FP16_PROBABILITY_ATOL of
    FP32's (of PyTorch's softmax without an FP32 graph)."""
    against, what = ((fp32.outputs[0], "FP32's") if fp32 is not None else
                     (torch.softmax(ref.logits, 1).numpy(), "PyTorch FP32's"))
    diff = np.abs(r.outputs[0].astype(np.float64) - against).max(1)
    within = float((diff <= FP16_PROBABILITY_ATOL).mean())
    return _fp16_value_check(f"{r.label} probabilities vs FP32", within >= FP16_AGREEMENT,
                             f"{100 * within:.2f}% of samples within {FP16_PROBABILITY_ATOL} of {what} in every "
                             f"class (max |diff| {diff.max():.1e}; need {100 * FP16_AGREEMENT:.0f}%)", ref)


@torch.no_grad()
def check_fp16_in_pytorch(g: Graph, ref: Reference) -> list[CheckResult]:
    """FP16: the graph's module run in float16 by PyTorch. Without CUDA, onnxruntime runs an FP16 graph's
    convolutions in float32 between Casts (and drops Cast pairs), so values past float16's range
    (65504) never overflow there; PyTorch's float16 kernels store every layer's output in float16,
    as a GPU does."""
    label = label_of(g.precision)
    try:
        scores = torch.cat([g.module.scores(ref.images[i:i + PARITY_BATCH]).float()
                            for i in range(0, len(ref.images), PARITY_BATCH)])
    except (RuntimeError, NotImplementedError) as e:  # no float16 CPU kernel for one of the model's ops
        return [CheckResult(f"{label} in PyTorch float16", True,
                            f"not run: PyTorch cannot run this model in float16 on this CPU "
                            f"({str(e).splitlines()[0][:120]})")]
    bad = int((~torch.isfinite(scores)).sum())
    finite = CheckResult(f"{label} finite in PyTorch float16", bad == 0,
                         f"{bad} NaN/Inf scores: the activations overflow float16" if bad else "no NaN or Inf")
    if bad:
        return [finite]
    plain, decisive = agreement(scores.argmax(1), g.module.graph_logits(ref.logits), FP16_LOGIT_RTOL * ref.scale)
    return [finite, CheckResult(f"{label} classes in PyTorch float16", decisive >= FP16_AGREEMENT,
                                f"{100 * decisive:.3f}% agree with PyTorch FP32 ({100 * plain:.3f}% strictly; "
                                f"need {100 * FP16_AGREEMENT:.0f}%)")]


def check_probabilities(r: GraphRun) -> CheckResult:
    err = float(np.abs(r.outputs[0].astype(np.float64).sum(1) - 1).max())
    return CheckResult(f"{r.label} probabilities", err <= (1e-2 if r.precision == "fp16" else 1e-3),
                       f"rows sum to 1 within {err:.1e}")


def check_batches(r: GraphRun, images: torch.Tensor) -> CheckResult:
    """The shipped graph at batch 1 and batch 8 gives the answers of the batched run."""
    batch8 = images[:PARITY_BATCH]
    if len(batch8) < PARITY_BATCH:
        batch8 = batch8.repeat((PARITY_BATCH + len(batch8) - 1) // len(batch8), 1, 1, 1)[:PARITY_BATCH]
    b8 = run(r.session, batch8, PARITY_BATCH)
    b1 = run(r.session, images[:1], 1)
    n = min(len(images), PARITY_BATCH)
    same8 = min(float((b8[k][:n] == o[:n]).mean()) for k, o in enumerate(r.outputs)) if r.task == "segment" else \
        (classes_of(b8[0], r.task)[:n] == r.classes[:n]).float().mean().item()
    same1 = min(float((b1[k] == o[:1]).mean()) for k, o in enumerate(r.outputs)) if r.task == "segment" else \
        (classes_of(b1[0], r.task) == r.classes[:1]).float().mean().item()
    need = FP16_AGREEMENT if r.precision == "fp16" else FP32_AGREEMENT
    ok = b8[0].shape[0] == PARITY_BATCH and b1[0].shape[0] == 1 and min(same1, same8) >= need
    return CheckResult(f"{r.label} batch 1 and 8", ok,
                       f"shapes {b1[0].shape} and {b8[0].shape}; {100 * same1:.2f}% / {100 * same8:.2f}% "
                       "equal to the batched run")


def check_other_size(r: GraphRun, model: nn.Module, spec: ModelSpec, images: torch.Tensor) -> CheckResult:
    """Segmentation: a size that is not a multiple of size_multiple, padded and cropped in the graph."""
    h, w = spec.input_size
    size = (h // 3 + 3, w // 3 + 5)
    if spec.size_multiple > 1 and size[0] % spec.size_multiple == 0:
        size = (size[0] + 1, size[1])
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    crop = images[:2, top:top + size[0], left:left + size[1]].contiguous()
    outs = run(r.session, crop)
    name = f"{r.label} other size"
    if any(o.shape != (len(crop), *size) for o in outs):
        return CheckResult(name, False, f"{size[0]}x{size[1]} in, {[o.shape[1:] for o in outs]} out")
    try:
        ref = torch_logits(model, crop, spec)
    except RuntimeError:  # a model that needs multiples of size_multiple: the graph's padding is all we can check
        return CheckResult(name, True, f"{size[0]}x{size[1]} in, outputs {size[0]}x{size[1]}")
    plain, decisive = agreement(classes_of(outs[0], "segment"), ref, FP32_LOGIT_RTOL * logit_scale(ref))
    return CheckResult(name, decisive >= FP32_AGREEMENT,
                       f"{size[0]}x{size[1]} in, outputs {size[0]}x{size[1]}, {100 * decisive:.3f}% of pixels "
                       f"agree with PyTorch")


def parity_checks(r: GraphRun, ref: Reference, num_classes: int, fp32: GraphRun | None) -> list[CheckResult]:
    """What one graph's run is held to: PyTorch's answers at FP32, FP32's at FP16."""
    results = [check_output_shapes(r, ref, num_classes)]
    if not results[0].passed:
        return results
    if r.precision in FP32_KINDS:
        results += [check_logits(r, ref), check_fp32_classes(r, ref)]
        if r.confidence is not None:
            results.append(check_fp32_confidence(r, ref))
    else:
        results += [check_finite(r), check_fp16_classes(r, ref, fp32), check_fp16_logits(r, ref)]
        if r.confidence is not None:
            results.append(check_fp16_confidence(r, ref, fp32))
        if r.task == "classify":
            results.append(check_fp16_probabilities(r, ref, fp32))
    if r.task == "classify":
        results.append(check_probabilities(r))
    return results


def fail_fast(results: list[CheckResult]) -> None:
    for r in results:
        if not r.passed:
            raise ExportCheckError(f"check failed: {r.name}: {r.detail}")


def run_structure_checks(spec: ModelSpec, num_classes: int, graphs: list[Graph]) -> list[CheckResult]:
    """`structure_checks` of every graph; raises ExportCheckError."""
    results: list[CheckResult] = []
    for g in graphs:
        results += structure_checks(onnx.load(str(g.path)), spec, num_classes, g.precision)
        fail_fast(results)
    return results


def run_checks(model: nn.Module, spec: ModelSpec, num_classes: int, graphs: list[Graph], trained: bool) -> list[CheckResult]:
    """Check the exported graphs (FP32 first, when exported) against `model`; raises ExportCheckError."""
    images, source = parity_inputs(spec, trained)
    ref = Reference(images, torch_logits(model, images, spec), source, trained)
    results = [CheckResult("inputs", True, f"{source}, {tuple(images.shape[1:3])}")]
    runs: dict[str, GraphRun] = {}
    for g in graphs:
        proto = onnx.load(str(g.path))
        results += structure_checks(proto, spec, num_classes, g.precision)
        fail_fast(results)
        runs[g.precision] = r = run_graph(g, proto, ref, spec.task)
        results += parity_checks(r, ref, num_classes, runs.get("fp32"))
        if g.precision == "fp16":
            results += check_fp16_in_pytorch(g, ref)
        fail_fast(results)
        results.append(check_batches(r, images))
        if spec.task == "segment" and r.precision in FP32_KINDS:
            results.append(check_other_size(r, model, spec, images))
        fail_fast(results)
    return results
