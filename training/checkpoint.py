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


def ship_weights(run_dir: Path, weights_out: Path, pick: str = "best", held_out_runs: list[Path] = ()) -> dict:
    """Write models/weights/<name>.pth from a run: the state_dict of its best (or last) epoch, its scores
    and how it was trained (commands, recipe, epochs, wall time, hardware, and for a fine-tuning run
    the record of the weights it started from); no optimizer state.

    `held_out_runs`: runs of the recipe with a whole drive held out (`--hold-out-drive`); their
    held-out scores are recorded as the estimate of how the shipped model does on unseen streets."""
    last = load_checkpoint(run_dir / "last.pt")
    chosen = last if pick == "last" else load_checkpoint(run_dir / "best.pt")
    training = {"commands": last.get("commands", []), "recipe": last["recipe"], "epochs": len(last["history"]),
                "epoch_shipped": chosen["epoch"] + 1, "wall_time_s": round(last["wall_time_s"]),
                "hardware": last["hardware"]}
    if last.get("init_from"):
        # a fine-tuning run: where it started, and how those weights were trained
        training["initialised_from"] = last["init_from"]
    if held_out_runs:
        training["held_out_estimates"] = [held_out_estimate(run) for run in held_out_runs]
    shipped = {"arch": chosen["arch"], "num_classes": chosen["num_classes"], "model": chosen["model"],
               "metrics": chosen["metrics"], "training": training}
    save_atomic(shipped, weights_out)
    return shipped


def held_out_estimate(run_dir: Path) -> dict:
    """The held-out-drive score of a run: its best epoch on the drive it never trained on."""
    last = load_checkpoint(run_dir / "last.pt")
    drive = last["recipe"].get("hold_out_drive")
    if not drive:
        raise ValueError(f"{run_dir}: not a held-out-drive run (its recipe has no hold_out_drive)")
    best = load_checkpoint(run_dir / "best.pt")
    estimate = {"drive": drive, "run": run_dir.name, "epoch": best["epoch"] + 1, "epochs": len(last["history"]),
                "recipe": last["recipe"], "held_out": best["metrics"]["held_out"], "val": best["metrics"].get("val")}
    if last.get("init_from"):  # a fine-tuning run: the estimate is of both steps, so name the first
        estimate["initialised_from"] = {k: last["init_from"].get(k) for k in ("file", "epoch")}
    # The best epoch was picked on the drive itself, so its score flatters; a model trained with a fixed
    # schedule ships its last epoch, and the held-out run's last epoch is the like-for-like estimate.
    final = last["history"][-1]
    if "held_out" in final:
        estimate["last_epoch"] = {"epoch": final["epoch"] + 1, "held_out": final["held_out"], "val": final.get("val")}
    return estimate
