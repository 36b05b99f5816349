"""The checks an export must pass before anything is written to the repository.

- contract: input `image` uint8 [N, H, W, C] (H, W dynamic for segmentation), first output `mask`
  uint8 [N, H, W] or `probabilities` float32 [N, K];
- op set: only default-domain ONNX ops, none on `DENY_OPS` (ops that onnxruntime runs on CPU only);
- FP32 vs PyTorch: >= 99% of the logits in front of the graph's ArgMax / Softmax close to the
  model's (unpooling near-ties move a few, see FP32_LOGITS_WITHIN), and the classes agree on
  >= 99.9% of pixels / samples (real images where the weights are trained: CamVid
  val for CamVid models, Fashion-MNIST test for Fashion-MNIST models; random images otherwise);
- FP16 vs FP32: no NaN or Inf, classes agree on >= 99%;
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
import torch.nn.functional as F
from torch import nn

from enet_serve.export.errors import ExportCheckError
from enet_serve.export.structure import uint8_rule_violations
from enet_serve.models.registry import ModelSpec
from enet_serve.training.common import Normalize
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
    """uint8 NHWC -> NHWC at `size`, bilinear with antialiasing (as the service and training resize)."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False,
                      antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


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


def with_logits_output(model: onnx.ModelProto, task: str) -> onnx.ModelProto | None:
    """A copy of `model` that also outputs the input of its last ArgMax (segment) / Softmax (classify)."""
    op = "ArgMax" if task == "segment" else "Softmax"
    nodes = [n for n in model.graph.node if n.op_type == op]
    if not nodes:
        return None
    name = nodes[-1].input[0]
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
# The checks
# --------------------------------------------------------------------------------------------

def check_contract(model: onnx.ModelProto, spec: ModelSpec, num_classes: int, label: str) -> CheckResult:
    inputs, outputs = model.graph.input, model.graph.output
    problems = []
    if len(inputs) != 1 or inputs[0].name != "image":
        problems.append(f"inputs {[i.name for i in inputs]}, expected ['image']")
    else:
        t = inputs[0].type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        if t.elem_type != onnx.TensorProto.UINT8:
            problems.append(f"image is {onnx.TensorProto.DataType.Name(t.elem_type)}, not UINT8")
        dynamic = [0, 1, 2] if spec.task == "segment" else [0]
        if len(dims) != 4 or dims[3] != spec.input_channels or any(not isinstance(dims[i], str) for i in dynamic):
            problems.append(f"image shape {dims}, expected [N, {'H, W' if spec.task == 'segment' else '%d, %d' % spec.input_size}, {spec.input_channels}]")
    want = ("mask", onnx.TensorProto.UINT8) if spec.task == "segment" else ("probabilities", onnx.TensorProto.FLOAT)
    if not outputs or outputs[0].name != want[0] or outputs[0].type.tensor_type.elem_type != want[1]:
        got = [(o.name, onnx.TensorProto.DataType.Name(o.type.tensor_type.elem_type)) for o in outputs]
        problems.append(f"outputs {got}, expected first {want[0]} {onnx.TensorProto.DataType.Name(want[1])}")
    detail = "; ".join(problems) or ("image uint8 [N,H,W,%d] -> mask uint8 [N,H,W]" % spec.input_channels
                                    if spec.task == "segment" else
                                    "image uint8 [N,%d,%d,%d] -> probabilities float32 [N,%d]"
                                    % (*spec.input_size, spec.input_channels, num_classes))
    return CheckResult(f"{label} contract", not problems, detail)


def check_ops(model: onnx.ModelProto, label: str) -> CheckResult:
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
    detail = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "") if problems \
        else "uint8 only at the input and the outputs, each next to a Cast from or to float"
    return CheckResult(f"{label} uint8 rule", not problems, detail)


def _fail_fast(results: list[CheckResult]) -> None:
    for r in results:
        if not r.passed:
            raise ExportCheckError(f"check failed: {r.name}: {r.detail}")


def run_checks(model: nn.Module, spec: ModelSpec, num_classes: int, graphs: list[Graph], trained: bool) -> list[CheckResult]:
    """Check the exported graphs (FP32 first, when exported) against `model`; raises ExportCheckError."""
    task = spec.task
    results: list[CheckResult] = []
    images, source = parity_inputs(spec, trained)
    ref = torch_logits(model, images, spec)
    scale = max(1.0, ref.abs().max().item())
    results.append(CheckResult("inputs", True, f"{source}, {tuple(images.shape[1:3])}"))

    sessions: dict[str, ort.InferenceSession] = {}
    outputs: dict[str, np.ndarray] = {}
    for g in graphs:
        label = g.precision.upper()
        proto = onnx.load(str(g.path))
        results += [check_contract(proto, spec, num_classes, label), check_ops(proto, label),
                    check_uint8_rule(proto, label)]
        _fail_fast(results)
        try:
            sessions[g.precision] = session = open_session(g.path, g.precision)
        except Exception as e:  # noqa: BLE001 - whatever onnxruntime raises, the graph does not load
            raise ExportCheckError(f"check failed: {label} graph does not load in onnxruntime: "
                                   f"{str(e).splitlines()[0][:300]}") from None
        # The parity run goes through a copy of the graph that also outputs the logits in front of
        # its ArgMax / Softmax; the shipped graph itself runs at batch 1 and 8 further down.
        logits_model = with_logits_output(proto, task)
        logits = ref_graph = None
        if logits_model is not None:
            outs = run(open_session(logits_model, g.precision), images)
            out, logits = outs[0], outs[-1].astype(np.float32)
            ref_graph = g.module.graph_logits(ref).numpy()
        else:
            out = run(session, images)[0]
        outputs[g.precision] = out
        expected_shape = (len(images), *images.shape[1:3]) if task == "segment" else (len(images), num_classes)
        if out.shape != expected_shape:
            results.append(CheckResult(f"{label} output", False, f"shape {out.shape}, expected {expected_shape}"))
            _fail_fast(results)
        classes = classes_of(out, task)

        if g.precision == "fp32":
            if logits is not None:
                if logits.shape != ref_graph.shape:
                    results.append(CheckResult("FP32 logits vs PyTorch", False,
                                               f"shape {logits.shape} vs PyTorch {ref_graph.shape}"))
                else:
                    # Max-unpooling moves a value where a 2x2 window's top two are within rounding of
                    # each other, so a few logits may differ a lot; the bulk must be within tolerance.
                    diff = np.abs(logits - ref_graph)
                    tol = FP32_LOGIT_RTOL * scale
                    within = float((diff <= tol).mean())
                    results.append(CheckResult(
                        "FP32 logits vs PyTorch", within >= FP32_LOGITS_WITHIN,
                        f"{100 * within:.3f}% within {tol:.1e} (max |logit| {scale:.3g}; max |diff| "
                        f"{diff.max():.2e}, mean {diff.mean():.1e})"))
            plain, decisive = agreement(classes, ref, FP32_LOGIT_RTOL * scale)
            what = "pixels" if task == "segment" else "samples"
            results.append(CheckResult("FP32 classes vs PyTorch", decisive >= FP32_AGREEMENT,
                                       f"{100 * decisive:.3f}% of {what} agree ({100 * plain:.3f}% strictly; "
                                       f"need {100 * FP32_AGREEMENT:.1f}%)"))
        else:
            bad = None
            if logits is not None and not np.isfinite(logits).all():
                bad = f"{int((~np.isfinite(logits)).sum())} NaN/Inf logits"
            if task == "classify" and not np.isfinite(out).all():
                bad = f"{int((~np.isfinite(out)).sum())} NaN/Inf probabilities"
            results.append(CheckResult("FP16 finite", bad is None, bad or "no NaN or Inf"))
            plain, decisive = agreement(classes, ref, FP16_LOGIT_RTOL * scale)
            vs32 = ""
            if "fp32" in outputs:
                same = (classes == classes_of(outputs["fp32"], task)).float().mean().item()
                vs32 = f"; {100 * same:.3f}% equal to FP32's"
            results.append(CheckResult("FP16 classes vs FP32", decisive >= FP16_AGREEMENT,
                                       f"{100 * decisive:.3f}% agree with PyTorch FP32 ({100 * plain:.3f}% strictly"
                                       f"{vs32}; need {100 * FP16_AGREEMENT:.0f}%)"))
        if task == "classify":
            sums = out.astype(np.float64).sum(1)
            err = float(np.abs(sums - 1).max())
            results.append(CheckResult(f"{label} probabilities", err <= (1e-3 if g.precision == "fp32" else 1e-2),
                                       f"rows sum to 1 within {err:.1e}"))
        _fail_fast(results)

        # Batch 1 and batch 8 give the answers of the batched run above.
        batch8 = images[:PARITY_BATCH]
        if len(batch8) < PARITY_BATCH:
            batch8 = batch8.repeat((PARITY_BATCH + len(batch8) - 1) // len(batch8), 1, 1, 1)[:PARITY_BATCH]
        b8 = run(session, batch8, PARITY_BATCH)[0]
        b1 = run(session, images[:1], 1)[0]
        same8 = (classes_of(b8, task)[:len(images)] == classes[:PARITY_BATCH]).float().mean().item()
        same1 = (classes_of(b1, task) == classes[:1]).float().mean().item()
        need = FP32_AGREEMENT if g.precision == "fp32" else FP16_AGREEMENT
        ok = b8.shape[0] == PARITY_BATCH and b1.shape[0] == 1 and min(same1, same8) >= need
        results.append(CheckResult(f"{label} batch 1 and 8", ok,
                                   f"shapes {b1.shape} and {b8.shape}; {100 * same1:.2f}% / {100 * same8:.2f}% "
                                   "equal to the batched run"))

        # Segmentation: another size, not a multiple of size_multiple, padded and cropped in the graph.
        if task == "segment" and g.precision == "fp32":
            results.append(_check_other_size(session, model, spec, images))
        _fail_fast(results)
    return results


def _check_other_size(session: ort.InferenceSession, model: nn.Module, spec: ModelSpec,
                      images: torch.Tensor) -> CheckResult:
    h, w = spec.input_size
    size = (h // 3 + 3, w // 3 + 5)
    if spec.size_multiple > 1 and size[0] % spec.size_multiple == 0:
        size = (size[0] + 1, size[1])
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    crop = images[:2, top:top + size[0], left:left + size[1]].contiguous()
    out = run(session, crop)[0]
    if out.shape != (len(crop), *size):
        return CheckResult("FP32 other size", False, f"{size[0]}x{size[1]} in, mask {out.shape[1:]} out")
    try:
        ref = torch_logits(model, crop, spec)
    except RuntimeError:  # a model that needs multiples of size_multiple: the graph's padding is all we can check
        return CheckResult("FP32 other size", True, f"{size[0]}x{size[1]} in, mask {size[0]}x{size[1]} out")
    plain, decisive = agreement(classes_of(out, "segment"), ref, FP32_LOGIT_RTOL * max(1.0, ref.abs().max().item()))
    return CheckResult("FP32 other size", decisive >= FP32_AGREEMENT,
                       f"{size[0]}x{size[1]} in, mask {size[0]}x{size[1]} out, {100 * decisive:.3f}% of pixels "
                       f"agree with PyTorch")
