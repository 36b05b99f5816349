"""Augmentation on uint8 tensors: random scale and crop, horizontal flip, colour jitter.

Segmentation transforms move the label with the image (nearest neighbour, void where padded).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


class SegmentationAugment:
    """Random scale in `scale`, random crop (padding with void where the image is smaller) to `crop`,
    horizontal flip with p = 0.5, brightness/contrast/saturation jitter of +-`jitter`."""

    def __init__(self, crop: tuple[int, int], scale: tuple[float, float] = (0.75, 1.25), jitter: float = 0.2,
                 void: int = 11):
        self.crop, self.scale, self.jitter, self.void = crop, scale, jitter, void

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = label.shape
        s = random.uniform(*self.scale)
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        if (sh, sw) == (h, w):  # what interpolating to the same size returns, without its cost (most of the time here)
            img, lbl = image.float(), label.float()
        else:
            img = F.interpolate(image[None].float(), size=(sh, sw), mode="bilinear", align_corners=False)[0]
            # nearest-exact samples at pixel centres as bilinear does: legacy "nearest" shifts labels half a pixel
            lbl = F.interpolate(label[None, None].float(), size=(sh, sw), mode="nearest-exact")[0, 0]
        ch, cw = self.crop
        ph, pw = max(0, ch - sh), max(0, cw - sw)
        if ph or pw:  # placed at random within the crop: padding only bottom-right pinned it to the top-left
            top_pad, left_pad = random.randint(0, ph), random.randint(0, pw)
            img = F.pad(img, (left_pad, pw - left_pad, top_pad, ph - top_pad), value=0.0)
            lbl = F.pad(lbl, (left_pad, pw - left_pad, top_pad, ph - top_pad), value=float(self.void))
        top = random.randint(0, img.shape[1] - ch)
        left = random.randint(0, img.shape[2] - cw)
        img = img[:, top : top + ch, left : left + cw]
        lbl = lbl[top : top + ch, left : left + cw]
        if random.random() < 0.5:
            img, lbl = img.flip(-1), lbl.flip(-1)
        img = color_jitter(img, self.jitter)
        return img.round().clamp(0, 255).to(torch.uint8), lbl.to(torch.uint8)


def color_jitter(img: torch.Tensor, amount: float) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - amount, 1 + amount]."""
    if amount <= 0:
        return img
    f = lambda: random.uniform(1 - amount, 1 + amount)  # noqa: E731
    img = img * f()
    mean = img.mean()
    img = (img - mean) * f() + mean
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    return (img - gray) * f() + gray
