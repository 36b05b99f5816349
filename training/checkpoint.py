"""Checkpoints: the whole training state each epoch (for --resume) and the shipped weights file."""
from __future__ import annotations

import json
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
    and how it was trained (commands and the code they ran, recipe, epochs, wall time, hardware, and for a
    fine-tuning run the record of the weights it started from); no optimizer state.

    `held_out_runs`: runs of the recipe with a whole drive held out (`--hold-out-drive`); their
    held-out scores are recorded as the estimate of how the shipped model does on unseen streets."""
    last = load_checkpoint(run_dir / "last.pt")
    chosen = last if pick == "last" else load_checkpoint(run_dir / "best.pt")
    training = training_record(last, epoch_shipped=chosen["epoch"] + 1)
    if held_out_runs:
        training["held_out_estimates"] = [held_out_estimate(run) for run in held_out_runs]
    shipped = {"arch": chosen["arch"], "num_classes": chosen["num_classes"], "model": chosen["model"],
               "metrics": chosen["metrics"], "training": training}
    save_atomic(shipped, weights_out)
    return shipped


def training_record(last: dict, epoch_shipped: int | None = None) -> dict:
    """How a run was trained, from its last.pt: commands and the code they ran, recipe, epochs (and the one
    shipped), wall time, hardware, and for a fine-tuning run the record of the weights it started from."""
    record = {"commands": last.get("commands", []), "code_versions": code_versions(last), "recipe": last["recipe"],
              "epochs": len(last["history"])}
    if epoch_shipped is not None:
        record["epoch_shipped"] = epoch_shipped
    record.update(wall_time_s=round(last["wall_time_s"]), hardware=last["hardware"])
    if last.get("init_from"):
        record["initialised_from"] = last["init_from"]
    return record


def code_versions(last: dict) -> list[str | None]:
    """The code each command of a run ran (`git describe`, aligned with its commands; None: not known,
    as for runs from before it was recorded)."""
    return last.get("code_versions") or [None] * len(last.get("commands", []))


def initialisation_record(path: Path, start: dict) -> dict:
    """What a fine-tuning run records of the weights it starts from (`start`, loaded from `path`): the
    file, its epoch (counted from 1), its scores and how it was trained. Shipped weights carry that
    record; a run's last.pt is made into one; a best.pt has its run's recipe only; a bare state dict none."""
    if "training" in start:
        training = start["training"]
        epoch = training.get("epoch_shipped")
    else:
        training = (training_record(start) if "history" in start else
                    {"recipe": start["recipe"]} if "recipe" in start else None)
        epoch = start["epoch"] + 1 if "epoch" in start else None
    return {"file": str(path), "epoch": epoch, "metrics": start.get("metrics"), "training": training}


def held_out_drive_of(record: dict) -> str | None:
    """The drive the weights of an initialisation record never trained on (None: trained on all, or unknown)."""
    return ((record.get("training") or {}).get("recipe") or {}).get("hold_out_drive")


def held_out_estimate(run_dir: Path) -> dict:
    """The held-out-drive score of a run: its best epoch on the drive it never trained on. `run_dir` may
    also be the record `save_held_out_estimate` wrote of a run (a JSON file), for a model trained after
    the run directory is gone."""
    if Path(run_dir).is_file():
        return read_held_out_record(Path(run_dir))
    last = load_checkpoint(run_dir / "last.pt")
    drive = last["recipe"].get("hold_out_drive")
    if not drive:
        raise ValueError(f"{run_dir}: not a held-out-drive run (its recipe has no hold_out_drive)")
    best = load_checkpoint(run_dir / "best.pt")
    estimate = {"drive": drive, "run": run_dir.name, "epoch": best["epoch"] + 1, "epochs": len(last["history"]),
                "recipe": last["recipe"], "commands": last.get("commands", []), "code_versions": code_versions(last),
                "held_out": best["metrics"]["held_out"], "val": best["metrics"].get("val")}
    if last.get("init_from"):  # a fine-tuning run: the estimate is of both steps, so name the first
        start = last["init_from"]
        estimate["initialised_from"] = {"file": start.get("file"), "epoch": start.get("epoch"),
                                        "hold_out_drive": held_out_drive_of(start)}
    # The best epoch was picked on the drive itself, so its score flatters; a model trained with a fixed
    # schedule ships its last epoch, and the held-out run's last epoch is the like-for-like estimate.
    final = last["history"][-1]
    if "held_out" in final:
        estimate["last_epoch"] = {"epoch": final["epoch"] + 1, "held_out": final["held_out"], "val": final.get("val")}
    return estimate


HELD_OUT_RECORD = "enet-serve held-out estimate"


def save_held_out_estimate(run_dir: Path, path: Path) -> dict:
    """Write `run_dir`'s held-out estimate to `path` (JSON): run directories are not kept in the repository,
    the record is, and `--held-out-run` takes it in their place. Returns the estimate."""
    estimate = held_out_estimate(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": HELD_OUT_RECORD, "estimate": estimate}, indent=1) + "\n")
    return estimate


def read_held_out_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a held-out estimate record ({e})") from None
    if not isinstance(record, dict) or record.get("format") != HELD_OUT_RECORD or "drive" not in record.get("estimate", {}):
        raise ValueError(f"{path}: not a held-out estimate record (write one with --save-estimate)")
    return record["estimate"]
