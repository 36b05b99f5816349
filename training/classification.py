"""LeNet-5 on Fashion-MNIST: the training loop (recipe `lenet5-fashion`) and its evaluation.

The 28x28 images are resized to LeNet's 32x32 input with bilinear interpolation, as the service
resizes any input to the model's native size; augmentation is a horizontal flip and a random
crop of the image padded by 2 pixels.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from models import get_model, get_spec
from training.checkpoint import load_checkpoint, save_atomic, ship_weights
from training.common import Normalize, hardware, pick_device, restore_rng, rng_state, seed_everything
from training.datasets import FashionMNIST


@dataclasses.dataclass
class ClassificationRecipe:
    arch: str = "lenet5"
    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def to_native_size(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, H, W), bilinear, as the service's resize does."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def augment(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random crop after padding by `pad` pixels, per sample."""
    n, _, h, w = images.shape
    flip = torch.rand(n) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n))
    rows = (dy.view(-1, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, images.shape[1], h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, images.shape[1], h, w)
    return cropped.gather(3, cols)


def evaluate_classification(predict, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent of `predict(uint8 NCHW) -> class indices`."""
    correct = 0
    for i in range(0, len(targets), batch_size):
        correct += int((predict(images[i : i + batch_size]) == targets[i : i + batch_size]).sum())
    return round(100.0 * correct / len(targets), 2)


def train_classification(data: Path, run_dir: Path, recipe: ClassificationRecipe, resume: bool = False,
                         device: str = "auto", threads: int | None = None, weights_out: Path | None = None, limit: int | None = None,
                         progress: bool = True, command: str | None = None) -> dict:
    dev = pick_device(device, threads)
    seed_everything(recipe.seed)
    spec = get_spec(recipe.arch)
    model = get_model(recipe.arch).to(dev)
    normalize = Normalize(spec).to(dev)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    state = load_checkpoint(last_path) if resume else None  # fail before reading the data
    train, test = FashionMNIST(data, "train"), FashionMNIST(data, "test")
    train_x, train_y = to_native_size(train.images[:limit], spec.input_size), train.targets[:limit]
    test_x, test_y = to_native_size(test.images[:limit], spec.input_size), test.targets[:limit]
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        model.eval()
        return model(normalize(images.to(dev))).argmax(1).cpu()

    start_epoch, best, history, wall = 0, -1.0, [], 0.0
    # Every command that (re)started this run, for the record in the shipped weights and config.json.
    commands = (state or {}).get("commands", []) + ([command] if command else [])
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history, wall = state["epoch"] + 1, state["best_top1"], state["history"], state["wall_time_s"]
        restore_rng(state)
    run_dir.mkdir(parents=True, exist_ok=True)

    entry: dict = history[-1] if history else {}
    bar = tqdm(range(start_epoch, recipe.epochs), desc=f"{recipe.arch} fashion-mnist", initial=start_epoch,
               total=recipe.epochs, disable=not progress)
    for epoch in bar:
        t0 = time.time()
        lr = recipe.lr * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        losses = []
        loader = DataLoader(TensorDataset(train_x, train_y), batch_size=recipe.batch_size, shuffle=True)
        for images, targets in loader:
            images, targets = augment(images).to(dev), targets.to(dev)
            loss = F.cross_entropy(model(normalize(images)), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        top1 = evaluate_classification(predict, test_x, test_y)
        entry = {"epoch": epoch, "loss": sum(losses) / len(losses), "lr": lr, "test_top1": top1,
                 "seconds": round(time.time() - t0, 1)}
        if top1 > best:
            best = top1
            save_atomic({"arch": recipe.arch, "num_classes": spec.num_classes, "model": model.state_dict(),
                         "epoch": epoch, "metrics": {"test": {"top1": top1}}}, best_path)
        wall += time.time() - t0
        history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", top1=f"{top1:.2f}")
        save_atomic({"arch": recipe.arch, "num_classes": spec.num_classes, "model": model.state_dict(),
                     "metrics": {"test": {"top1": top1}}, "optimizer": optimizer.state_dict(), "epoch": epoch, "best_top1": best, "history": history,
                     "wall_time_s": wall, **rng_state(), "recipe": dataclasses.asdict(recipe), "commands": commands,
                     "hardware": hardware(dev)}, last_path)
        with open(run_dir / "history.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    if weights_out is not None:
        # The last epoch is shipped: the test set must not pick the model (best.pt is kept for reference).
        ship_weights(run_dir, weights_out, pick="last")
    return entry
