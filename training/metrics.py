"""Confusion-matrix metrics: mIoU, per-class IoU, class-average and global accuracy, top-1."""
from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates a K x K confusion matrix (rows: truth, columns: prediction); `ignore_index` is skipped."""

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction, target) -> None:
        prediction = _as_numpy(prediction).reshape(-1).astype(np.int64)
        target = _as_numpy(target).reshape(-1).astype(np.int64)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction has {prediction.size} elements, target {target.size}")
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        idx = target[keep] * self.num_classes + np.clip(prediction[keep], 0, self.num_classes - 1)
        self.matrix += np.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def mean_iou(self) -> float:
        return float(np.nanmean(self.iou()))

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall TP / (TP + FN); NaN for a class absent from the truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        total = self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, tp / total, np.nan)

    def mean_class_accuracy(self) -> float:
        return float(np.nanmean(self.class_accuracy()))

    def global_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self, labels: list[str] | None = None) -> dict:
        """Scores in percent, rounded to 2 decimals, ready for JSON."""
        labels = labels or [str(i) for i in range(self.num_classes)]
        pct = lambda v: None if np.isnan(v) else round(100.0 * float(v), 2)  # noqa: E731
        return {
            "mIoU": pct(self.mean_iou()),
            "class_avg_accuracy": pct(self.mean_class_accuracy()),
            "global_accuracy": pct(self.global_accuracy()),
            "per_class_iou": {name: pct(v) for name, v in zip(labels, self.iou())},
        }

    def confusions(self, labels: list[str] | None = None, top: int = 3, floor: float = 0.01) -> dict:
        """Where each class's pixels went, in percent: {class: {"recall", "precision", "mistaken_for":
        {other class: share of this class's pixels}}} with the `top` largest shares of at least `floor`,
        for the classes present in the truth. Thin classes (poles, signs) show whether they are missed for
        their background or predicted in the wrong place (low precision)."""
        labels = labels or [str(i) for i in range(self.num_classes)]
        truth, predicted = self.matrix.sum(1), self.matrix.sum(0)
        out = {}
        for k, name in enumerate(labels[:self.num_classes]):
            if truth[k] == 0:
                continue
            shares = self.matrix[k] / truth[k]
            others = [j for j in np.argsort(-shares, kind="stable") if j != k and shares[j] >= floor][:top]
            out[name] = {
                "recall": round(100.0 * float(shares[k]), 2),
                "precision": round(100.0 * float(self.matrix[k, k] / predicted[k]), 2) if predicted[k] else None,
                "mistaken_for": {labels[j]: round(100.0 * float(shares[j]), 2) for j in others},
            }
        return out


def top1_accuracy(logits_or_predictions, targets) -> float:
    """Fraction of samples whose highest score (or given class index) equals the target."""
    pred = _as_numpy(logits_or_predictions)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    targets = _as_numpy(targets)
    return float((pred == targets).mean()) if targets.size else float("nan")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
