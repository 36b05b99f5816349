"""What a segmentation answer is made of, as pure functions of a class mask (and a confidence map):
the filters (`min_confidence`, `classes`), COCO compressed RLE, connected regions, per-class mean
confidence. No HTTP here: the task handler (service/tasks/segment.py) and the stream call these.

Regions are labelled by OpenCV's `connectedComponentsWithStatsWithAlgorithm` with Grana's BBDT and
one OpenCV thread: on a 360x480 ENet mask, 4.9 ms for every class against 12.2 ms for OpenCV's default
algorithm (or with two threads) and 11.3 ms for SciPy's `ndimage.label` + `find_objects` + `bincount`
(BENCHMARKS.md "Segmentation answers").
"""
from __future__ import annotations

from typing import Iterable

import functools

import numpy as np

_RLE_CHUNKS = 7  # 5 bits each: enough for any count of a 2**31-pixel image


# -- filters --------------------------------------------------------------------------------------------

def below_confidence(confidence: np.ndarray, min_confidence: float) -> np.ndarray:
    """Where the top class's probability (confidence = probability x 255) is below `min_confidence` (0..1)."""
    return confidence.astype(np.float32) < np.float32(min_confidence * 255.0)


def in_classes(mask: np.ndarray, keep: Iterable[int]) -> np.ndarray:
    """Where `mask` is one of the classes `keep` (a comparison per class: faster than a table lookup)."""
    out = np.zeros(mask.shape, bool)
    for c in keep:
        out |= mask == c
    return out


# -- COCO compressed RLE ------------------------------------------------------------------------------

def class_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of equal values of `mask` read column-major (as COCO does): starts, ends, values."""
    flat = np.ascontiguousarray(mask.T).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    return starts, ends, flat[starts]


def rle_counts(starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """COCO's uncompressed counts of a binary mask whose ones are the runs [starts, ends) of `size` pixels:
    alternately zeros and ones, starting with zeros (possibly 0), as pycocotools' rleEncode."""
    counts = np.empty(2 * len(starts) + 1, np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = size - ends[-1]
    return counts if counts[-1] else counts[:-1]


def rle_string(counts: np.ndarray) -> str:
    """COCO's compressed counts string (pycocotools' rleToString): each count from the third on as the
    difference to the count two before, in 5-bit groups with a continuation bit, as characters from 48."""
    x = counts.astype(np.int64)
    x[3:] = counts[3:] - counts[1:-2]
    shifts = 5 * np.arange(_RLE_CHUNKS)
    groups = (x[:, None] >> shifts) & 0x1F
    rest = x[:, None] >> (shifts + 5)
    more = np.where(groups & 0x10, rest != -1, rest != 0)
    length = np.argmin(more, axis=1) + 1  # the first group after which nothing is left
    position = np.arange(_RLE_CHUNKS)
    chars = groups + 48 + 0x20 * (position < (length - 1)[:, None])
    return chars[position < length[:, None]].astype(np.uint8).tobytes().decode("ascii")


def coco_rle(mask: np.ndarray, classes: Iterable[int]) -> dict[int, str]:
    """For each class of `classes` present in `mask`, the COCO compressed RLE counts of its binary mask."""
    starts, ends, values = class_runs(mask)
    out = {}
    for c in classes:
        mine = values == c
        if mine.any():
            out[c] = rle_string(rle_counts(starts[mine], ends[mine], mask.size))
    return out


# -- regions -----------------------------------------------------------------------------------------

def default_min_area(height: int, width: int) -> int:
    """0.1 % of the image (173 pixels at 360x480): smaller specks are rarely objects."""
    return max(1, round(height * width / 1000))


@functools.cache
def _opencv():
    """OpenCV on the first `regions=true`: importing it costs ~37 MB resident that a server never asked
    for regions need not hold (BENCHMARKS.md "Memory")."""
    import cv2

    cv2.setNumThreads(1)  # the codec thread pool runs one answer per thread; OpenCV's parallel labelling is slower
    return cv2


def connected_regions(mask: np.ndarray, classes: Iterable[int], min_area: int) -> list[dict]:
    """Each class's 8-connected regions of at least `min_area` pixels, largest first within a class:
    `index`, `area`, `bbox` [x, y, w, h] and `centroid` [x, y] in the mask's pixel coordinates."""
    cv2 = _opencv()
    out = []
    for c in classes:
        binary = (mask == c).view(np.uint8)
        n, _, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(binary, 8, cv2.CV_32S, cv2.CCL_GRANA)
        areas = stats[1:n, cv2.CC_STAT_AREA]
        keep = np.flatnonzero(areas >= min_area) + 1
        for i in keep[np.argsort(-stats[keep, cv2.CC_STAT_AREA], kind="stable")]:
            x, y, w, h, area = (int(v) for v in stats[i])
            out.append({"index": int(c), "area": area, "bbox": [x, y, w, h],
                        "centroid": [round(float(centroids[i, 0]), 2), round(float(centroids[i, 1]), 2)]})
    return out


# -- statistics ---------------------------------------------------------------------------------------

def class_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=num_classes)


def mean_confidence(mask: np.ndarray, confidence: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per class index, the mean confidence (0..1) of its pixels (NaN where it has none). Through the joint
    histogram of (class, confidence): an integer bincount, ~10x faster than a bincount with weights."""
    k = len(counts)
    joint = np.bincount(mask.ravel().astype(np.intp) * 256 + confidence.ravel(), minlength=k * 256)[: k * 256]
    sums = joint.reshape(k, 256) @ np.arange(256)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / (counts * 255.0)
