"""`enet-serve eval`: one model scored as PyTorch, ONNX FP32 and ONNX FP16, side by side.

The ONNX graphs are run exactly as the service runs them (uint8 NHWC in, mask or probabilities
out), so this measures what is served, not only what was trained.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from enet_serve.model_config import CONFIG_NAME, load_config
from enet_serve.models import get_model, get_spec
from enet_serve.models.labels import load_labels
from enet_serve.training.classification import evaluate_classification
from enet_serve.training.common import Normalize, pick_device, to_native_size, torch_predictor
from enet_serve.paths import DEFAULT_CAMVID, DEFAULT_FASHION_MNIST, DEFAULT_REPOSITORY, WEIGHTS_DIR
from enet_serve.training.datasets import CamVid, FashionMNIST
from enet_serve.training.segmentation import evaluate_segmentation


def onnx_predictor(path: Path, task: str):
    """predict(uint8 NCHW tensor) -> class indices, through the ONNX graph's uint8 NHWC contract."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(images: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {input_name: images.permute(0, 2, 3, 1).contiguous().numpy()})[0]
        return torch.from_numpy(np.asarray(out.argmax(1) if task == "classify" else out).astype(np.int64))

    return predict


def load_trained(name: str, weights: Path) -> tuple[torch.nn.Module, str]:
    if not weights.is_file():
        raise FileNotFoundError(f"{name}: no weights at {weights}")
    state = torch.load(weights, map_location="cpu", weights_only=False)
    model = get_model(state["arch"], num_classes=state["num_classes"])
    model.load_state_dict(state["model"])
    return model.eval(), state["arch"]


def evaluate(name: str, data: Path | None = None, repository: Path | None = None, weights: Path | None = None,
             split: str | None = None, limit: int | None = None, drives: tuple[str, ...] | None = None,
             confusions: bool = False) -> dict:
    """{"model", "task", "split", "results": {"pytorch": {...}, "onnx-fp32": {...}, "onnx-fp16": {...}}}, with
    an "onnx-<key>" entry for every file of config.json (e.g. onnx-fp32_gpu). `confusions` (segmentation):
    also "confusions", where each class's pixels went in the served FP32 graph (ConfusionMatrix.confusions)."""
    repository = repository or DEFAULT_REPOSITORY
    config_path = repository / name / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{name}: no {config_path} (export the model first)")
    config = load_config(config_path)
    weights = weights or WEIGHTS_DIR / f"{name}.pth"
    model, arch = load_trained(name, weights)
    spec = get_spec(arch)
    dev = pick_device("cpu")
    torch_predict = torch_predictor(model, Normalize(spec), dev)
    predictors = {"pytorch": torch_predict}
    for precision, entry in config.files.items():
        predictors[f"onnx-{precision}"] = onnx_predictor(repository / name / entry.path, config.task)

    results = {}
    if config.task == "segment":
        split = split or "val"
        dataset = CamVid(data or DEFAULT_CAMVID, split, limit=limit, drives=drives)
        if drives:
            split = f"{split}, drive {'+'.join(drives)}"
        labels = load_labels(spec.labels)
        matrices = {key: evaluate_segmentation(predict, dataset) for key, predict in predictors.items()}
        results = {key: cm.summary(labels) for key, cm in matrices.items()}
    else:
        split = split or "test"
        dataset = FashionMNIST(data or DEFAULT_FASHION_MNIST, split)
        images = to_native_size(dataset.images[:limit], spec.input_size)
        targets = dataset.targets[:limit]
        for key, predict in predictors.items():
            results[key] = {"top1": evaluate_classification(predict, images, targets)}
    report = {"model": name, "task": config.task, "split": split, "images": len(dataset) if limit is None else limit,
              "results": results}
    if confusions and config.task == "segment":
        served = "onnx-fp32" if "onnx-fp32" in matrices else "pytorch"
        report["confusions"] = {"runtime": served, "classes": matrices[served].confusions(labels)}
    return report


def format_report(report: dict) -> str:
    """A table: one row per metric (and per class for segmentation), one column per runtime."""
    columns = list(report["results"])
    first = report["results"][columns[0]]
    rows = [(k, [report["results"][c][k] for c in columns]) for k, v in first.items() if not isinstance(v, dict)]
    if "per_class_iou" in first:
        rows += [(f"IoU {cls}", [report["results"][c]["per_class_iou"][cls] for c in columns])
                 for cls in first["per_class_iou"]]
    width = max(len(r[0]) for r in rows) + 2
    column = max(12, *(len(c) + 2 for c in columns))  # "onnx-fp32_gpu" is 13 characters
    lines = [f"{report['model']} on {report['split']} ({report['images']} images)",
             "".ljust(width) + "".join(c.rjust(column) for c in columns)]
    for label, values in rows:
        lines.append(label.ljust(width) + "".join(("-" if v is None else f"{v:.2f}").rjust(column) for v in values))
    if "confusions" in report:
        classes = report["confusions"]["classes"]
        width = max(len(c) for c in classes) + 2
        lines += ["", f"where each class's pixels went ({report['confusions']['runtime']}, percent of its pixels)",
                  "".ljust(width) + "recall".rjust(8) + "precision".rjust(11) + "   mistaken for"]
        for name, c in classes.items():
            precision = "-" if c["precision"] is None else f"{c['precision']:.1f}"
            mistaken = ", ".join(f"{other} {share:.1f}" for other, share in c["mistaken_for"].items())
            lines.append(name.ljust(width) + f"{c['recall']:.1f}".rjust(8) + precision.rjust(11) + "   " + mistaken)
    return "\n".join(lines)
