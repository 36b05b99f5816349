"""Segmentation losses beyond cross-entropy: the Lovász-softmax surrogate of mean IoU.

Berman, Rannen Triki, Blaschko 2018, "The Lovász-Softmax loss: a tractable surrogate for the
optimization of the intersection-over-union measure in neural networks", arXiv:1705.08790.
Cross-entropy weighs pixels; mIoU weighs classes, so a thin class such as CamVid's poles counts as
much as road however few pixels it has. The Lovász extension of each class's Jaccard loss is exact
on hard (0/1) predictions and convex in the probabilities between them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def jaccard_gradient(truth_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at pixels sorted by decreasing error:
    the increase of 1 - IoU as each pixel in turn is counted as wrong. `truth_sorted` is 0/1 float."""
    total = truth_sorted.sum()
    intersection = total - truth_sorted.cumsum(0)
    union = total + (1.0 - truth_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(jaccard) > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Mean over the classes present in `targets` of the Lovász extension of their Jaccard loss,
    the pixels of the whole batch pooled (as mIoU pools them over a split).

    logits (N, C, H, W), targets (N, H, W) int; pixels labelled `ignore_index` are left out.
    """
    probs = F.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    targets = targets.reshape(-1)
    if ignore_index is not None:
        keep = targets != ignore_index
        probs, targets = probs[keep], targets[keep]
    losses = []
    for c in targets.unique().tolist():
        truth = (targets == c).float()
        errors = (truth - probs[:, c]).abs()
        errors_sorted, order = errors.sort(descending=True)
        losses.append(torch.dot(errors_sorted, jaccard_gradient(truth[order])))
    if not losses:  # a batch of void only
        return logits.sum() * 0.0
    return torch.stack(losses).mean()
