"""Checkpoints: the whole training state each epoch (for --resume) and the shipped weights file."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save through a temporary file and a rename, so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (nothing to resume)")
    return torch.load(path, map_location="cpu", weights_only=False)


def weights_file(model: torch.nn.Module, arch: str, num_classes: int, metrics: dict, training: dict) -> dict:
    """What models/weights/<name>.pth holds: the state_dict and where it came from, no optimizer state."""
    return {"arch": arch, "num_classes": num_classes, "model": model.state_dict(),
            "metrics": metrics, "training": training}
