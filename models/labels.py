"""Label sets shipped as data (models/labels/<name>.json): class names and, for segmentation, colours."""
from __future__ import annotations

import functools
import json
from pathlib import Path

LABELS_DIR = Path(__file__).with_name("labels")


@functools.lru_cache(maxsize=None)
def load_label_set(name: str) -> dict:
    """The whole label set: {"labels": [...], "colors": [[r, g, b], ...]?, "void": {...}?, "source": "..."}."""
    path = LABELS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in LABELS_DIR.glob("*.json"))
        raise KeyError(f"unknown label set {name!r} (no {path}); known: {', '.join(known)}")
    return json.loads(path.read_text())


def load_labels(name: str) -> list[str]:
    return list(load_label_set(name)["labels"])


def load_colors(name: str) -> list[tuple[int, int, int]] | None:
    colors = load_label_set(name).get("colors")
    return [tuple(c) for c in colors] if colors else None
