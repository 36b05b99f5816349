"""LeNet-5 on Fashion-MNIST: the training loop (recipe `lenet5-fashion`) and its evaluation.

The 28x28 images are resized to LeNet's 32x32 input with bilinear interpolation, as the service
resizes any input to the model's native size; augmentation is a horizontal flip and a random
crop of the image padded by 2 pixels.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from enet_serve.models import get_model, get_spec
from enet_serve.training.checkpoint import ship_weights
from enet_serve.training.common import (Normalize, hardware, pick_device, seed_everything, to_native_size,
                                        torch_predictor)
from enet_serve.training.datasets import FashionMNIST
from enet_serve.training.run import TrainingRun


@dataclasses.dataclass
class ClassificationRecipe:
    arch: str = "lenet5"
    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


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
    run = TrainingRun(run_dir, recipe, spec.num_classes, resume, command, hardware(dev))
    train, test = FashionMNIST(data, "train"), FashionMNIST(data, "test")
    train_x, train_y = to_native_size(train.images[:limit], spec.input_size), train.targets[:limit]
    test_x, test_y = to_native_size(test.images[:limit], spec.input_size), test.targets[:limit]
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

    predict = torch_predictor(model, normalize, dev)
    run.restore(model, optimizer)
    bar = tqdm(range(run.start_epoch, recipe.epochs), desc=f"{recipe.arch} fashion-mnist", initial=run.start_epoch,
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
        run.end_epoch(model, optimizer, entry, t0, top1, {"test": {"top1": top1}})
        bar.set_postfix(loss=f"{entry['loss']:.3f}", top1=f"{top1:.2f}")

    if weights_out is not None:
        # The last epoch is shipped: the test set must not pick the model (best.pt is kept for reference).
        ship_weights(run_dir, weights_out, pick="last")
    return run.last_entry
