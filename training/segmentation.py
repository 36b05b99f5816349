"""ENet on CamVid: the training loop (recipe `enet-camvid`) and its evaluation.

The recipe follows the public PyTorch reimplementation that reached 65.2 val mIoU (Adam, lr 5e-4,
weight decay 2e-4, batch 10, ENet's class weights, void ignored) with changes for a 2-core CPU
and for streets it never saw: most epochs train on random crops (`crop`) and the last `full_epochs`
on whole 360x480 frames, each after a random scale (0.75-1.25), colour jitter and a horizontal
flip; the learning rate follows a cosine from lr to lr/100 over all epochs. With `encoder_epochs` the
schedule has ENet's two stages: first the encoder alone on 1/8-size labels (training/encoder_stage.py),
then the whole network, each stage with its own cosine.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from enet_serve.models import get_model, get_spec
from enet_serve.models.labels import load_labels
from enet_serve.training.augment import SegmentationAugment
from enet_serve.training.checkpoint import (held_out_drive_of, initialisation_record, load_checkpoint,
                                              ship_weights)
from enet_serve.training.common import Normalize, hardware, pick_device, seed_everything, torch_predictor
from enet_serve.training.datasets import CAMVID_NUM_CLASSES, CAMVID_VOID, CamVid, enet_class_weights
from enet_serve.training.encoder_stage import EncoderHead, downsample_labels
from enet_serve.training.losses import lovasz_softmax
from enet_serve.training.metrics import ConfusionMatrix
from enet_serve.training.run import TrainingRun


@dataclasses.dataclass
class SegmentationRecipe:
    arch: str = "enet"
    # 200 epochs, not 100: held out, 37.5 on the daytime drive and 40.4 at dusk against 35.5 and 38.8 for the
    # same seed at 100 (README, Training); poles begin to be learned.
    epochs: int = 200
    full_epochs: int = 40  # the last epochs train on whole frames
    crop: tuple[int, int] = (192, 256)
    # Random scale and colour jitter from the first epoch: they cost val (frames of a drive trained on)
    # 3 points but won the held-out drives, dusk most (34.6 against 26.8 for crops plus a jitter step;
    # README, Training), so the shipped model trains with them. (1, 1) and 0 turn them off.
    scale: tuple[float, float] = (0.75, 1.25)
    jitter: float = 0.2
    # The weight of a Lovász-softmax term (training/losses.py, a surrogate of mIoU) added to the weighted
    # cross-entropy: every class present in a batch counts alike, however few pixels it has.
    lovasz: float = 0.0
    batch_size: int = 10
    lr: float = 5e-4
    weight_decay: float = 2e-4
    eval_every: int = 5
    seed: int = 0
    # The CamVid splits trained on ("train", or "train+val" for the shipped model) and a drive held out
    # of them. val's frames come from a drive that train also holds (0016E5), so val rewards memory of
    # that drive; a whole held-out drive measures what a new street gets. The epoch shipped is the best
    # on the held-out drive, else on val when val was not trained on, else the last (a fixed schedule).
    train_split: str = "train"
    hold_out_drive: str | None = None
    # ENet's two-stage schedule: the first encoder_epochs train the encoder alone on labels downsampled
    # to its 1/8 output (not scored: the decoder is untrained), the rest the whole network.
    encoder_epochs: int = 0

    @property
    def select(self) -> str | None:
        """The split that picks the epoch to ship, never one trained on: the held-out drive, else val when
        only train was trained on; None for a fixed schedule (its last epoch ships)."""
        if self.hold_out_drive:
            return "held_out"
        return "val" if "val" not in self.train_split.split("+") else None

    def scores(self, epoch: int) -> bool:
        """Whether `epoch` (from 0) is scored: every eval_every-th and the last, none of the encoder stage, and
        every whole-frame epoch of a run that picks its epoch (the best of them may ship; a fixed schedule's
        scores there would only be history)."""
        if epoch < self.encoder_epochs:
            return False
        full = epoch >= self.epochs - self.full_epochs
        return (epoch + 1) % self.eval_every == 0 or epoch == self.epochs - 1 or (full and self.select is not None)


def evaluate_segmentation(predict, dataset: CamVid, batch_size: int = 4, progress: bool = False) -> ConfusionMatrix:
    """Confusion matrix of `predict(uint8 NCHW) -> int NHW` over `dataset` (no augmentation)."""
    cm = ConfusionMatrix(CAMVID_NUM_CLASSES, ignore_index=CAMVID_VOID)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for images, labels in tqdm(loader, desc="eval", leave=False, disable=not progress):
        cm.update(predict(images), labels)
    return cm


def train_segmentation(data: Path, run_dir: Path, recipe: SegmentationRecipe, resume: bool = False,
                       device: str = "auto", threads: int | None = None, weights_out: Path | None = None, limit: int | None = None,
                       progress: bool = True, command: str | None = None, init_from: Path | None = None,
                       workers: int = 0, stop_at: float | None = None) -> dict:
    """Train (or resume) the recipe; checkpoints go to run_dir/{last,best}.pt each epoch.

    Returns the history entry of the last epoch. `limit` trains on the first images only (tests).
    `init_from` starts a new run from the model weights of a checkpoint or shipped weights file
    (a fine-tuning run with a schedule of its own), where `resume` continues the same run.
    `workers` augment in that many DataLoader processes (a GPU outruns one CPU core); `stop_at`
    (a time.time() value) stops before an epoch that would end after it, leaving last.pt to --resume.
    """
    if not 0 <= recipe.encoder_epochs < recipe.epochs:
        raise ValueError(f"encoder_epochs must be in [0, epochs): {recipe.encoder_epochs} of {recipe.epochs}")
    dev = pick_device(device, threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop and frame sizes: pick the fastest kernels once
    seed_everything(recipe.seed)
    spec = get_spec(recipe.arch)
    labels = load_labels(spec.labels)
    model = get_model(recipe.arch, num_classes=CAMVID_NUM_CLASSES).to(dev)
    normalize = Normalize(spec).to(dev)

    head = EncoderHead(model, CAMVID_NUM_CLASSES).to(dev) if recipe.encoder_epochs else None
    start = load_checkpoint(init_from) if init_from is not None else None
    init_record = initialisation_record(init_from, start) if start is not None else None
    if init_record is not None and recipe.hold_out_drive:
        # an estimate of both steps is only held out if the first step held the same drive out
        if init_record["training"] is None:
            raise ValueError(f"--init-from {init_from}: nothing in that file says which drives its weights trained on "
                             f"(a run's last.pt or best.pt and shipped weights do), so a fine-tune holding "
                             f"{recipe.hold_out_drive} out could score frames they trained on")
        source_drive = held_out_drive_of(init_record)
        if source_drive != recipe.hold_out_drive:
            held = f"held out {source_drive} only" if source_drive else "held out no drive"
            raise ValueError(f"--init-from {init_from}: those weights trained on drive {recipe.hold_out_drive} ({held}): "
                             f"a fine-tune holding {recipe.hold_out_drive} out would score frames they trained on")
    run = TrainingRun(run_dir, recipe, CAMVID_NUM_CLASSES, resume, command, hardware(dev), init_record=init_record,
                      extra_modules={"encoder_head": head} if head is not None else None)
    held_out = (recipe.hold_out_drive,) if recipe.hold_out_drive else ()
    train_set = CamVid(data, recipe.train_split, limit=limit, exclude_drives=held_out)
    scored = {"val": CamVid(data, "val", limit=limit, exclude_drives=held_out)}
    if held_out:
        scored["held_out"] = CamVid(data, recipe.train_split, limit=limit, drives=held_out)
    select = recipe.select
    class_weights = enet_class_weights(train_set.class_frequencies()).float().to(dev)
    # One optimizer for both stages: Adam skips the parameters a stage leaves without gradients.
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    # fused on a GPU: one kernel for all parameters instead of several per tensor (ENet has ~300 small ones)
    optimizer = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=dev.type == "cuda")

    def lr_at(epoch: int) -> float:  # cosine from lr to lr/100 within each stage
        first, length = ((0, recipe.encoder_epochs) if epoch < recipe.encoder_epochs
                         else (recipe.encoder_epochs, recipe.epochs - recipe.encoder_epochs))
        t = min((epoch - first) / max(1, length - 1), 1.0)
        return recipe.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))

    if start is not None and not resume:
        model.load_state_dict(start["model"])
    run.restore(model, optimizer)
    bar = tqdm(range(run.start_epoch, recipe.epochs), desc=f"{recipe.arch} camvid", initial=run.start_epoch,
               total=recipe.epochs, disable=not progress)
    # (training seconds, pixels per frame) of the last epoch and the last scoring's seconds: whether the next
    # epoch, scored or not, fits before stop_at
    last_epoch, last_eval_s = None, 0.0
    loaders: dict[tuple[int, int], DataLoader] = {}
    for epoch in bar:
        t0 = time.time()
        full = epoch >= recipe.epochs - recipe.full_epochs
        crop = tuple(train_set.images[0].shape[-2:]) if full else tuple(recipe.crop)
        encoder_stage = epoch < recipe.encoder_epochs
        scoring = recipe.scores(epoch)
        if stop_at is not None and last_epoch is not None and \
                t0 + last_epoch[0] * max(1.0, crop[0] * crop[1] / last_epoch[1]) + scoring * last_eval_s > stop_at:
            print(f"{run_dir}: stopped before epoch {epoch + 1} of {recipe.epochs} (time is up); --resume continues")
            break
        train_set.transform = SegmentationAugment(crop, recipe.scale, recipe.jitter, void=CAMVID_VOID)
        if crop not in loaders:  # one per crop size: worker processes keep the transform they started with
            loaders[crop] = DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True,
                                       drop_last=len(train_set) > recipe.batch_size, num_workers=workers,
                                       persistent_workers=workers > 0, pin_memory=dev.type == "cuda")
        loader = loaders[crop]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch)
        model.train()
        losses = []
        for images, targets in loader:
            images, targets = images.to(dev, non_blocking=True), targets.to(dev, non_blocking=True).long()
            if encoder_stage:
                logits, targets = head(normalize(images)), downsample_labels(targets, CAMVID_VOID)
            else:
                logits = model(normalize(images))
            loss = F.cross_entropy(logits, targets, weight=class_weights, ignore_index=CAMVID_VOID)
            if recipe.lovasz and not encoder_stage:
                loss = loss + recipe.lovasz * lovasz_softmax(logits, targets, ignore_index=CAMVID_VOID)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())  # reading a loss is a GPU sync: once an epoch, not per batch
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", miou=f"{run.best_score:.1f}")
        entry = {"epoch": epoch, "loss": torch.stack(losses).double().mean().item(), "lr": lr_at(epoch),
                 "crop": list(crop), "seconds": round(time.time() - t0, 2)}
        if encoder_stage:
            entry["stage"] = "encoder"
        score = metrics = None
        trained_s = time.time() - t0
        if scoring:
            predict = torch_predictor(model, normalize, dev)
            eval_batch = 16 if dev.type == "cuda" else 4
            t_eval = time.time()
            metrics = {k: evaluate_segmentation(predict, ds, batch_size=eval_batch).summary(labels) for k, ds in scored.items()}
            last_eval_s = time.time() - t_eval
            entry["eval_seconds"] = round(last_eval_s, 2)
            if held_out:
                metrics["held_out"]["drive"] = recipe.hold_out_drive
            entry.update(metrics)
            score = metrics[select]["mIoU"] if select else None
        run.end_epoch(model, optimizer, entry, t0, score, metrics)
        last_epoch = (trained_s, crop[0] * crop[1])
        bar.set_postfix(loss=f"{entry['loss']:.3f}", miou=f"{run.best_score:.1f}")

    if weights_out is not None and (run.best_path.is_file() or select is None):
        # the best epoch on data it never trained on, or the end of the fixed schedule
        ship_weights(run_dir, weights_out, pick="best" if select else "last")
    return run.last_entry
