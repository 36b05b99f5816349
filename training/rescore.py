"""Scores of shipped ENet weights recomputed on CamVid's original frames (`--ship-only --score-on DIR`).

The GPU kit trains and scores on a pack whose images are JPEG q95; `enet-serve eval` and the tests
score the original PNGs. Re-scoring the shipped epoch (val) and the held-out runs' epochs (their
drive, and val) on the originals makes every number in config.json one that `eval` reproduces.
"""
from __future__ import annotations

from pathlib import Path

import torch

from enet_serve.models import get_model, get_spec
from enet_serve.models.labels import load_labels
from enet_serve.training.checkpoint import load_checkpoint, save_atomic
from enet_serve.training.common import Normalize, torch_predictor
from enet_serve.training.datasets import CamVid
from enet_serve.training.run import code_version
from enet_serve.training.segmentation import evaluate_segmentation


def rescore_shipped(weights: Path, data: Path, held_out_runs: list[Path] = ()) -> dict:
    """Rewrite `weights` (a shipped ENet file) with its scores and its held-out estimates computed on `data`."""
    shipped = torch.load(weights, map_location="cpu", weights_only=False)
    datasets: dict[tuple, CamVid] = {}

    def score(state: dict, split: str, drives: tuple[str, ...] | None = None) -> dict:
        if (split, drives) not in datasets:
            datasets[split, drives] = CamVid(data, split, drives=drives)
        spec = get_spec(state["arch"])
        model = get_model(state["arch"], num_classes=state["num_classes"])
        model.load_state_dict(state["model"])
        predict = torch_predictor(model, Normalize(spec), torch.device("cpu"))
        return evaluate_segmentation(predict, datasets[split, drives]).summary(load_labels(spec.labels))

    shipped["metrics"] = {**(shipped.get("metrics") or {}), "val": score(shipped, "val")}
    estimates = shipped["training"].get("held_out_estimates", [])
    if len(estimates) != len(held_out_runs):
        raise ValueError(f"{weights}: {len(estimates)} held-out estimates recorded, but {len(held_out_runs)} runs given")
    for estimate, run_dir in zip(estimates, held_out_runs):
        if Path(run_dir).is_file():
            raise ValueError(f"{run_dir}: a record of a held-out run keeps its scores, not its weights, so it cannot "
                             "be re-scored; give the run directory")
        drive = (estimate["drive"],)
        for key, checkpoint in (("best", run_dir / "best.pt"), ("last_epoch", run_dir / "last.pt")):
            state = load_checkpoint(checkpoint)
            target = estimate if key == "best" else estimate.get("last_epoch")
            if target is None:
                continue
            target["held_out"] = {**score(state, "train+val", drive), "drive": estimate["drive"]}
            target["val"] = score(state, "val")
    # which frames and which code took these scores (a run's code_versions say which trained it)
    shipped["training"].update(scored_on=str(data), scored_with=code_version())
    save_atomic(shipped, weights)
    return shipped
