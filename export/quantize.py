"""INT8 for CPUs: onnxruntime's static quantization of an exported FP32 graph, and its accuracy gate.

The INT8 file is made from whatever FP32 graph the exporter wrote (nothing here depends on the
graph's inside), so it follows the FP32 graph when that changes.

- Calibration: activation ranges from real training frames where the weights are trained (CamVid
  train for CamVid models, Fashion-MNIST train for Fashion-MNIST models; never the frames the gate
  scores), random images otherwise. Each range is the mean over the frames of each frame's own
  min/max (onnxruntime's `CalibMovingAverage` over one collection pass), not the extremes over all:
  with the extremes, ENet trained with random scale and colour jitter lost 0.63 val mIoU to INT8 (the
  gate allows 0.5), with the mean 0.09. Histogram calibration
  (percentile, entropy) keeps every activation of every frame: past 24 GiB at 360x480.
- Form: QOperator (QLinearConv and friends), per-channel weights, uint8 activations and int8 weights
  (the u8 x s8 products that AVX-512 VNNI / AVX2 kernels take). On the project's AVX-512 VNNI CPU this
  was the fast form; QDQ form ran slower than FP32 (BENCHMARKS.md, "INT8"). Per-channel weights ran
  as fast as per-tensor ones and lost less of ENet's mIoU once the last layer was float.
- What is quantized: the network up to its last layer. The layer that computes the class scores (the
  input of the graph's ArgMax / Softmax) and everything after it stay float: with the scores
  quantized, onnxruntime ran ENet's ArgMax on uint8 (1.9 ms against 1.1 in float), dequantized the
  scores once per consumer, and the classifiers' probabilities came out of a QLinearSoftmax in
  steps of 1/256. Float from the last layer on took 2 ms off ENet's INT8 frame at 360x480.
- The gate: ENet-style segmentation: val mIoU within `MIOU_DROP` points of the FP32 graph's and the
  masks equal on >= `MASK_AGREEMENT` of the pixels; classifiers: top-1 equal to FP32's on >=
  `TOP1_AGREEMENT` of the test images. Random-init weights have no accuracy to keep: their INT8 graph
  is only checked to load and answer in the contract's shapes. Trained weights whose data set this
  machine lacks are refused (`gateable`) unless `--int8-ungated` asks for such an unchecked graph.
"""
from __future__ import annotations

import logging
import tempfile

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from enet_serve.export import checks as checks_mod
from enet_serve.export.checks import CheckResult, _resize_uint8
from enet_serve.export.errors import ExportCheckError, ExportError
from enet_serve.models.registry import ModelSpec

MIOU_DROP = 0.5  # points of val mIoU the INT8 graph may lose against the FP32 graph
MASK_AGREEMENT = 0.98
TOP1_AGREEMENT = 0.99
# The confidence (max softmax as uint8) is coarser in INT8: the quantized head scores move it by a few
# levels; 16 of 255 is about 6 points of probability, enough to keep a min_confidence threshold meaningful.
CONFIDENCE_TOLERANCE = 16
CONFIDENCE_AGREEMENT = 0.9
# CamVid train frames, evenly spaced over the split. ENet's val mIoU loss against FP32 with 32, 64 and 128
# (min/max over all frames, the model shipped first): 0.44, 0.33, 0.22 points (5 s and 90 MB more at 128).
CALIBRATION_FRAMES = 128
CALIBRATION_CLASSIFY = 256  # Fashion-MNIST train images
GATE_CLASSIFY = 1000  # Fashion-MNIST test images
GATE_BATCH = 4


def calibration_images(spec: ModelSpec, trained: bool) -> tuple[np.ndarray, str]:
    """uint8 NHWC images at the native size to calibrate on, and where they come from."""
    images = None
    if trained and spec.input_channels == 3 and spec.labels == "camvid":
        images = _camvid(spec, "train", CALIBRATION_FRAMES)
        source = f"CamVid train ({CALIBRATION_FRAMES} frames)"
    elif trained and spec.input_channels == 1 and spec.labels == "fashion_mnist":
        images = _fashion_mnist(spec, "train", CALIBRATION_CLASSIFY)
        source = f"Fashion-MNIST train ({CALIBRATION_CLASSIFY} images)"
    if images is None:
        h, w = spec.input_size
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (8, h, w, spec.input_channels), dtype=np.uint8)
        source = "random images (8)" + (" - no dataset found" if trained else "")
    return images, source


def _camvid(spec: ModelSpec, split: str, count: int | None) -> np.ndarray | None:
    from PIL import Image

    listing = checks_mod.CAMVID_DIR / f"{split}.txt"
    if not listing.is_file():
        return None
    names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if count is not None:
        names = [names[i] for i in np.linspace(0, len(names) - 1, num=min(count, len(names))).round().astype(int)]
    images = np.stack([np.asarray(Image.open(checks_mod.CAMVID_DIR / n).convert("RGB")) for n in names])
    return _resize_uint8(torch.from_numpy(images), spec.input_size).numpy()


def _fashion_mnist(spec: ModelSpec, split: str, count: int) -> np.ndarray | None:
    stem = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        path = checks_mod.FASHION_MNIST_DIR / f"{stem}-images-idx3-ubyte{suffix}"
        if path.is_file():
            images = torch.from_numpy(checks_mod.read_idx(path)[:count].copy()).unsqueeze(-1)
            return _resize_uint8(images, spec.input_size).numpy()
    return None


def _mark_int8(path: Path) -> None:
    """The quantizer copies the FP32 graph's metadata: the file says what it is."""
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "precision":
            prop.value = "int8"
    onnx.save(model, str(path))


class _Frames:
    """onnxruntime's CalibrationDataReader protocol over uint8 NHWC images, one per batch."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._feeds = iter([{input_name: images[i:i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self._feeds, None)


def quantize(fp32_path: Path, int8_path: Path, images: np.ndarray, task: str) -> None:
    """Write the static INT8 (QOperator, per-channel) form of the graph at `fp32_path` to `int8_path`;
    the last layer of `task`'s graph and its post-processing stay float (`float_nodes`)."""
    with tempfile.TemporaryDirectory(prefix="enet-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        _basic_optimised(fp32_path, prepared)
        graph = onnx.load(str(prepared))
        for i, node in enumerate(graph.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"  # the quantizer excludes nodes by name
        onnx.save(graph, str(prepared))
        _quantize_static(prepared, fp32_path, int8_path, graph.graph.input[0].name, images,
                         exclude=float_nodes(graph, task))


# Ops that only move the scores: the float part starts before them, at the op that computes the scores.
_LAYOUT_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}


def float_nodes(model: onnx.ModelProto, task: str) -> list[str]:
    """The names of the nodes that stay float: the op that computes the graph's class scores
    (`checks.scores_tensor`), the layout ops between it and them, and everything downstream. Left
    quantized, a Reshape or the last Conv in front of ArgMax hands it a DequantizeLinear that
    onnxruntime drops at load, running the ArgMax on uint8 again."""
    scores = checks_mod.scores_tensor(model, task)
    if scores is None:
        return []
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    while scores in producers and producers[scores].op_type in _LAYOUT_OPS:
        scores = producers[scores].input[0]
    found: dict[str, None] = {producers[scores].name: None} if scores in producers else {}
    frontier = [scores]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in found:
                found[node.name] = None
                frontier.extend(node.output)
    return list(found)


def _basic_optimised(src: Path, dst: Path) -> None:
    """onnxruntime's basic (standard-ONNX) rewrites, written out: constants folded and Identity nodes
    dropped, so every Conv's bias is an initializer the quantizer can read (torch.onnx shares equal
    initializers through Identity nodes, which random-init weights have many of)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _quantize_static(prepared: Path, fp32_path: Path, int8_path: Path, input_name: str, images: np.ndarray,
                     exclude: list[str]) -> None:
    """Quantize `prepared` (a temporary form of the graph at `fp32_path`, which errors name) into `int8_path`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # The quantizer logs on the root logger for every tensor it leaves alone (the uint8 image, the
    # int64 shapes) and suggests a pre-processing pass that made no difference here.
    logging.disable(logging.WARNING)
    try:
        quantize_static(str(prepared), str(int8_path), _Frames(input_name, images),
                        quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_providers=["CPUExecutionProvider"],
                        # one frame per batch and one collection pass: the plain mean of the frames' min/max.
                        # CalibMaxIntermediateOutputs or CalibStridedMinMax would merge chunks by an
                        # exponential average at 0.01 instead, which barely counts any chunk but the first.
                        nodes_to_exclude=exclude, extra_options={"CalibMovingAverage": True})
    except Exception as e:  # noqa: BLE001 - onnxruntime.quantization raises many kinds
        raise ExportError(f"{fp32_path}: onnxruntime could not quantize it to INT8: "
                          f"{str(e).strip().splitlines()[0][:300]}") from e
    finally:
        logging.disable(logging.NOTSET)


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # answers, not speed (as the other export checks)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _outputs(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + GATE_BATCH]})[0]
                           for i in range(0, len(images), GATE_BATCH)])


def _all_outputs(session: ort.InferenceSession, images: np.ndarray) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    return session.run(None, {name: images})


def gate(fp32_path: Path, int8_path: Path, spec: ModelSpec, trained: bool) -> list[CheckResult]:
    """The INT8 graph's checks against the FP32 graph; raises ExportCheckError on a failure."""
    try:
        int8, fp32 = _session(int8_path), _session(fp32_path)
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime raises, the graph does not load
        raise ExportCheckError(f"check failed: INT8 graph {int8_path.name} does not load in onnxruntime: "
                               f"{str(e).splitlines()[0][:300]}") from None
    results = [_contract(int8, fp32)]
    if results[-1].passed:
        gated = trained and gateable(spec)  # reads the data set's listing and an image: once
        if gated and spec.task == "segment":
            results += _segment_gate(fp32, int8, spec)
        elif gated:
            results.append(_classify_gate(fp32, int8, spec))
        else:
            results.append(_untrained_answer(fp32, int8, spec, trained))
    for r in results:
        if not r.passed:
            raise ExportCheckError(f"check failed: {r.name}: {r.detail}")
    return results


def gateable(spec: ModelSpec) -> bool:
    """Whether this machine has the data set to calibrate `spec`'s trained INT8 graph on and gate it with."""
    if spec.task == "segment" and spec.labels == "camvid" and spec.input_channels == 3:
        return _camvid(spec, "val", 1) is not None and (checks_mod.CAMVID_DIR / "train.txt").is_file()
    if spec.task == "classify" and spec.labels == "fashion_mnist" and spec.input_channels == 1:
        return _fashion_mnist(spec, "test", 1) is not None and _fashion_mnist(spec, "train", 1) is not None
    return False


def refuse_ungated(spec: ModelSpec, arch: str) -> None:
    """Raise ExportError: trained weights whose INT8 graph this machine can neither calibrate nor gate."""
    where = {"camvid": f"CamVid in {checks_mod.CAMVID_DIR}",
             "fashion_mnist": f"Fashion-MNIST in {checks_mod.FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)"}
    need = where.get(spec.labels, f"a {spec.labels} data set, which the INT8 gate does not know")
    raise ExportError(f"int8 of trained {arch}: calibrating and gating its accuracy needs {need}, not found; "
                      "export without int8, or add --int8-ungated for an INT8 graph calibrated on random images "
                      "whose accuracy nothing checks")


def _contract(int8: ort.InferenceSession, fp32: ort.InferenceSession) -> CheckResult:
    """The INT8 graph keeps the FP32 graph's inputs and outputs (names and types)."""
    sig = lambda s: ([(i.name, i.type) for i in s.get_inputs()], [(o.name, o.type) for o in s.get_outputs()])  # noqa: E731
    same = sig(int8) == sig(fp32)
    return CheckResult("INT8 contract", same, "inputs and outputs as FP32's" if same else
                       f"INT8 {sig(int8)} vs FP32 {sig(fp32)}")


def _segment_gate(fp32: ort.InferenceSession, int8: ort.InferenceSession, spec: ModelSpec) -> list[CheckResult]:
    from enet_serve.training.datasets import CAMVID_NUM_CLASSES, CAMVID_VOID, CamVid
    from enet_serve.training.metrics import ConfusionMatrix

    data = CamVid(checks_mod.CAMVID_DIR, "val")
    matrices = {"fp32": ConfusionMatrix(CAMVID_NUM_CLASSES, CAMVID_VOID),
                "int8": ConfusionMatrix(CAMVID_NUM_CLASSES, CAMVID_VOID)}
    equal = total = close = 0
    confidence_diff = 0.0
    has_confidence = len(fp32.get_outputs()) > 1  # mask first, then the confidence (uint8, 255 = certain)
    for i in range(0, len(data), GATE_BATCH):
        images = torch.stack(data.images[i:i + GATE_BATCH]).permute(0, 2, 3, 1).contiguous().numpy()
        labels = torch.stack(data.labels[i:i + GATE_BATCH]).numpy()
        (a, *conf_a), (b, *conf_b) = _all_outputs(fp32, images), _all_outputs(int8, images)
        matrices["fp32"].update(a, labels)
        matrices["int8"].update(b, labels)
        equal += int((a == b).sum())
        total += a.size
        if has_confidence:
            d = np.abs(conf_a[0].astype(np.int16) - conf_b[0].astype(np.int16))
            close += int((d <= CONFIDENCE_TOLERANCE).sum())
            confidence_diff += float(d.sum())
    m32, m8 = 100 * matrices["fp32"].mean_iou(), 100 * matrices["int8"].mean_iou()
    agree = equal / total
    results = []
    if has_confidence:
        share = close / total
        results.append(CheckResult(
            "INT8 confidence vs FP32", share >= CONFIDENCE_AGREEMENT,
            f"{100 * share:.2f}% of pixels within {CONFIDENCE_TOLERANCE} of FP32's (mean |diff| "
            f"{confidence_diff / total:.1f} of 255; need {100 * CONFIDENCE_AGREEMENT:.0f}%)"))
    return [CheckResult("INT8 val mIoU", m8 >= m32 - MIOU_DROP,
                        f"{m8:.2f} against FP32's {m32:.2f} on CamVid val ({len(data)} frames; may lose "
                        f"{MIOU_DROP})"),
            CheckResult("INT8 masks vs FP32", agree >= MASK_AGREEMENT,
                        f"{100 * agree:.2f}% of pixels equal (need {100 * MASK_AGREEMENT:.0f}%)"), *results]


def _classify_gate(fp32: ort.InferenceSession, int8: ort.InferenceSession, spec: ModelSpec) -> CheckResult:
    images = _fashion_mnist(spec, "test", GATE_CLASSIFY)
    a, b = _outputs(fp32, images).argmax(1), _outputs(int8, images).argmax(1)
    agree = float((a == b).mean())
    return CheckResult("INT8 top-1 vs FP32", agree >= TOP1_AGREEMENT,
                       f"{100 * agree:.2f}% of {len(images)} Fashion-MNIST test images (need "
                       f"{100 * TOP1_AGREEMENT:.0f}%)")


def _untrained_answer(fp32: ort.InferenceSession, int8: ort.InferenceSession, spec: ModelSpec,
                      trained: bool) -> CheckResult:
    """Random weights (or no data set to score on): the INT8 graph answers in FP32's shapes and dtypes."""
    images, _ = calibration_images(spec, trained=False)
    a, b = _outputs(fp32, images[:2]), _outputs(int8, images[:2])
    ok = a.shape == b.shape and a.dtype == b.dtype and (b.dtype != np.float32 or bool(np.isfinite(b).all()))
    why = "random weights" if not trained else "--int8-ungated: no data set to score on"
    return CheckResult("INT8 answers", ok, f"output {b.shape} {b.dtype} as FP32's; accuracy not gated ({why})")


def export_int8(fp32_path: Path, int8_path: Path, spec: ModelSpec, trained: bool, check: bool = True) -> list[CheckResult]:
    """Quantize the exported FP32 graph into `int8_path` and gate it; the check results."""
    images, source = calibration_images(spec, trained)
    quantize(fp32_path, int8_path, images, spec.task)
    _mark_int8(int8_path)
    calibration = CheckResult("INT8 calibration", True, f"{source}, min/max averaged over frames; QOperator, per-channel, "
                              "u8 activations, s8 weights; float from the last layer on")
    return [calibration, *(gate(fp32_path, int8_path, spec, trained) if check else [])]
