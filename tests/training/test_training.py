"""A few real training steps on a tiny subset: the loss goes down and --resume continues."""
import dataclasses
import json
import shutil

import pytest
import torch

from enet_serve.cli import main
from enet_serve.export.weights import read_weights
from enet_serve.training.checkpoint import load_checkpoint
from enet_serve.training.classification import ClassificationRecipe, augment, train_classification
from enet_serve.training.datasets import DEFAULT_CAMVID, DEFAULT_FASHION_MNIST
from enet_serve.training.segmentation import SegmentationRecipe, train_segmentation

needs_camvid = pytest.mark.skipif(not (DEFAULT_CAMVID / "train.txt").is_file(), reason="no ../shared/datasets/camvid")
needs_fashion = pytest.mark.skipif(not DEFAULT_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")


@needs_camvid
def test_enet_steps_lower_the_loss_and_resume(tmp_path):
    torch.set_num_threads(2)
    recipe = SegmentationRecipe(epochs=6, full_epochs=0, crop=(96, 128), scale=(1.0, 1.0), jitter=0.0,
                                batch_size=4, lr=5e-3, eval_every=100)
    run = tmp_path / "run"
    train_segmentation(DEFAULT_CAMVID, run, recipe, limit=4, progress=False, device="cpu")
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 6
    assert history[-1]["loss"] < history[0]["loss"]
    # The last epoch is always scored on val, and the best weights kept.
    assert 0.0 <= history[-1]["val"]["mIoU"] <= 100.0
    assert load_checkpoint(run / "best.pt")["arch"] == "enet"
    # Any checkpoint of a run is a weights file the exporter reads (it loads with weights_only=True).
    assert read_weights(run / "last.pt").arch == "enet"

    recipe.epochs = 7
    entry = train_segmentation(DEFAULT_CAMVID, run, recipe, resume=True, limit=4, progress=False, device="cpu",
                               weights_out=tmp_path / "enet.pth")
    assert entry["epoch"] == 6
    assert len(load_checkpoint(run / "last.pt")["history"]) == 7
    shipped = torch.load(tmp_path / "enet.pth", weights_only=False)
    assert set(shipped) == {"arch", "num_classes", "model", "metrics", "training"}
    assert "optimizer" not in shipped and shipped["training"]["epochs"] == 7

    # A new run initialised from the shipped weights starts where they left off, not from scratch.
    recipe.epochs = 1
    train_segmentation(DEFAULT_CAMVID, tmp_path / "finetune", recipe, limit=4, progress=False, device="cpu",
                       init_from=tmp_path / "enet.pth")
    finetune = load_checkpoint(tmp_path / "finetune" / "last.pt")["history"]
    assert finetune[0]["loss"] < history[0]["loss"]
    # ... and its shipped weights say what they started from, with that file's own training record
    from enet_serve.training.checkpoint import ship_weights

    record = ship_weights(tmp_path / "finetune", tmp_path / "ft.pth")["training"]["initialised_from"]
    assert record["file"] == str(tmp_path / "enet.pth") and record["training"]["epochs"] == 7


@needs_camvid
def test_enet_lovasz_term_is_trained_and_recorded(tmp_path):
    """--lovasz adds the Lovász-softmax term to the weighted cross-entropy: the same first epoch costs more
    by that term, the sum still falls, and the run's record names the weight."""
    torch.set_num_threads(2)
    losses = {}
    for weight in (0.0, 1.0):
        recipe = SegmentationRecipe(epochs=6 if weight else 1, full_epochs=0, crop=(96, 128), batch_size=4, lr=5e-3,
                                    eval_every=100, lovasz=weight)
        train_segmentation(DEFAULT_CAMVID, tmp_path / str(weight), recipe, limit=4, progress=False, device="cpu")
        losses[weight] = [h["loss"] for h in load_checkpoint(tmp_path / str(weight) / "last.pt")["history"]]
    assert losses[1.0][0] > losses[0.0][0] + 0.1  # the Lovász loss of an untrained net is far from 0
    assert losses[1.0][-1] < losses[1.0][0]
    assert load_checkpoint(tmp_path / "1.0" / "last.pt")["recipe"]["lovasz"] == 1.0


@needs_camvid
def test_enet_held_out_drive_picks_and_records_the_unseen_drive(tmp_path):
    """A held-out-drive run scores the drive it never trained on and picks its epoch there; a train+val
    run has nothing unseen to pick on and ships its last epoch, with the held-out run's score recorded."""
    from enet_serve.training.checkpoint import ship_weights

    torch.set_num_threads(2)
    recipe = SegmentationRecipe(epochs=2, full_epochs=0, crop=(96, 128), scale=(1.0, 1.0), jitter=0.0, batch_size=4,
                                eval_every=1, train_split="train+val", hold_out_drive="0006R0")
    train_segmentation(DEFAULT_CAMVID, tmp_path / "held", recipe, limit=4, progress=False, device="cpu")
    last = load_checkpoint(tmp_path / "held" / "last.pt")
    assert last["history"][-1]["held_out"]["drive"] == "0006R0"
    assert load_checkpoint(tmp_path / "held" / "best.pt")["metrics"]["held_out"]["mIoU"] == max(
        h["held_out"]["mIoU"] for h in last["history"])

    recipe = SegmentationRecipe(epochs=1, full_epochs=0, crop=(96, 128), batch_size=4, train_split="train+val")
    train_segmentation(DEFAULT_CAMVID, tmp_path / "all", recipe, limit=4, progress=False, device="cpu",
                       weights_out=tmp_path / "all.pth")
    assert not (tmp_path / "all" / "best.pt").exists()  # val was trained on: nothing to pick the epoch with
    shipped = ship_weights(tmp_path / "all", tmp_path / "all.pth", pick="last", held_out_runs=[tmp_path / "held"])
    assert shipped["training"]["recipe"]["train_split"] == "train+val"
    estimate = shipped["training"]["held_out_estimates"][0]
    assert estimate["drive"] == "0006R0" and estimate["recipe"]["hold_out_drive"] == "0006R0"
    assert estimate["held_out"]["mIoU"] == load_checkpoint(tmp_path / "held" / "best.pt")["metrics"]["held_out"]["mIoU"]
    assert "initialised_from" not in estimate
    # the run directory is not kept: its record (--save-estimate) stands in for it, the same estimate
    assert main(["train", "enet-camvid", "--run-dir", str(tmp_path / "held"),
                 "--save-estimate", str(tmp_path / "held.json")]) == 0
    from_record = ship_weights(tmp_path / "all", tmp_path / "all-2.pth", pick="last", held_out_runs=[tmp_path / "held.json"])
    assert from_record["training"]["held_out_estimates"] == [json.loads(json.dumps(estimate))]
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a held-out estimate record"):
        ship_weights(tmp_path / "all", tmp_path / "all-3.pth", pick="last", held_out_runs=[tmp_path / "other.json"])

    # a held-out fine-tune of that run: its estimate names the weights the fine-tune started from
    recipe = SegmentationRecipe(epochs=1, full_epochs=0, crop=(96, 128), batch_size=4, train_split="train+val",
                                hold_out_drive="0006R0", jitter=0.2)
    train_segmentation(DEFAULT_CAMVID, tmp_path / "held-ft", recipe, limit=4, progress=False, device="cpu",
                       init_from=tmp_path / "held" / "last.pt")
    shipped = ship_weights(tmp_path / "all", tmp_path / "all.pth", pick="last", held_out_runs=[tmp_path / "held-ft"])
    estimate = shipped["training"]["held_out_estimates"][0]
    assert estimate["initialised_from"] == {"file": str(tmp_path / "held" / "last.pt"), "epoch": 2,
                                            "hold_out_drive": "0006R0"}
    # the fine-tune's record keeps its first step's, read from that run's last.pt (commands, recipe, epochs)
    first = load_checkpoint(tmp_path / "held-ft" / "last.pt")["init_from"]["training"]
    assert first["recipe"]["hold_out_drive"] == "0006R0" and first["epochs"] == 2 and first["recipe"]["jitter"] == 0.0
    assert first["commands"] == load_checkpoint(tmp_path / "held" / "last.pt")["commands"]

    # weights that trained on the drive cannot start a fine-tune that holds it out: its estimate would not be
    for source in (tmp_path / "all" / "last.pt", tmp_path / "all.pth"):
        with pytest.raises(ValueError, match="trained on drive 0006R0 \\(held out no drive\\)"):
            train_segmentation(DEFAULT_CAMVID, tmp_path / "leak", recipe, limit=4, progress=False, device="cpu",
                               init_from=source)
    # and a run directory that holds a run is continued with resume, never overwritten by a new run
    with pytest.raises(FileExistsError, match="--resume continues it"):
        train_segmentation(DEFAULT_CAMVID, tmp_path / "held", recipe, limit=4, progress=False, device="cpu")


@needs_fashion
def test_lenet_learns_fashion_mnist(tmp_path):
    recipe = ClassificationRecipe(epochs=2, batch_size=64)
    entry = train_classification(DEFAULT_FASHION_MNIST, tmp_path / "run", recipe, limit=2000, progress=False,
                                 device="cpu", weights_out=tmp_path / "lenet.pth")
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert history[1]["loss"] < history[0]["loss"]
    assert entry["test_top1"] > 40.0  # ten classes: chance is 10%
    assert torch.load(tmp_path / "lenet.pth", weights_only=False)["metrics"]["test"]["top1"] == entry["test_top1"]


def test_augment_moves_pixels_but_keeps_shape():
    images = torch.arange(4 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(4, 1, 32, 32)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "lenet5-fashion", "--resume", "--run-dir", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().out


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "enet-camvid", "--run-dir", str(tmp_path / "run"), "--data", str(tmp_path)]) == 2
    assert "train.txt" in capsys.readouterr().out


def test_rng_state_round_trips_every_generator_cuda_included(monkeypatch):
    """--resume continues the same random sequences: torch's, Python's, NumPy's and, on a GPU (where
    dropout draws from it), CUDA's (faked here: the CI has no GPU)."""
    import random

    import numpy as np

    from enet_serve.training.common import restore_rng, rng_state

    cuda_state = [torch.arange(4, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # the sequences move on
    restore_rng(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
    assert restored == [cuda_state]


@needs_camvid
def test_resume_keeps_the_runs_recipe_and_best_pt_says_what_it_trained_on(tmp_path, capsys):
    from enet_serve.training.run import resumed_recipe

    torch.set_num_threads(2)
    recipe = SegmentationRecipe(epochs=2, full_epochs=0, crop=(96, 128), batch_size=4, train_split="train+val",
                                hold_out_drive="0001TP", eval_every=100)
    run = tmp_path / "run"
    train_segmentation(DEFAULT_CAMVID, run, recipe, limit=4, progress=False, device="cpu")
    # --resume continues with the run's own recipe, whatever options the command leaves out ...
    assert resumed_recipe(run, SegmentationRecipe) == recipe
    # ... and refuses options that change what it trains on (left out, the held-out drive was trained on)
    with pytest.raises(ValueError, match="hold_out_drive '0001TP' -> None; train_split 'train\\+val' -> 'train'"):
        train_segmentation(DEFAULT_CAMVID, run, dataclasses.replace(recipe, hold_out_drive=None, train_split="train"),
                           resume=True, limit=4, progress=False, device="cpu")
    assert main(["train", "enet-camvid", "--resume", "--run-dir", str(run), "--jitter", "0.3", "--no-progress"]) == 2
    assert "jitter 0.2 -> 0.3" in capsys.readouterr().out
    # best.pt records the recipe: a fine-tune holding out a drive its weights trained on is refused, as from last.pt
    held_0006 = dataclasses.replace(recipe, hold_out_drive="0006R0", epochs=1)
    with pytest.raises(ValueError, match="trained on drive 0006R0 \\(held out 0001TP only\\)"):
        train_segmentation(DEFAULT_CAMVID, tmp_path / "ft", held_0006, limit=4, progress=False, device="cpu",
                           init_from=run / "best.pt")
    # weights that say nothing of their training cannot start a held-out fine-tune
    torch.save({"arch": "enet", "num_classes": 11, "model": load_checkpoint(run / "best.pt")["model"]}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="nothing in that file says which drives"):
        train_segmentation(DEFAULT_CAMVID, tmp_path / "ft", held_0006, limit=4, progress=False, device="cpu",
                           init_from=tmp_path / "bare.pt")


def _tiny_run(run_dir, recipe, commands, score=1.0):
    """A run of a one-layer model, one epoch per command (TrainingRun's records without any data)."""
    from enet_serve.training.run import TrainingRun

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = {"held_out": {"drive": recipe.hold_out_drive, "mIoU": score}} if recipe.hold_out_drive else None
    for command in commands:
        run = TrainingRun(run_dir, recipe, 11, resume=(run_dir / "last.pt").is_file(), command=command, hardware="cpu")
        run.restore(model, optimizer)
        epoch = len(run.history)
        run.end_epoch(model, optimizer, {"epoch": epoch, **(metrics or {})}, 0.0,
                      score=score + epoch if metrics else None, metrics=metrics)


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_a_run_records_the_code_each_of_its_commands_ran(tmp_path, monkeypatch):
    """A record says which code produced it (the README had to say by hand which runs predate a fix):
    one `git describe` per command that (re)started the run, aligned with the commands, through resume
    into the shipped weights and the held-out estimate; None where it cannot be known."""
    import subprocess

    from enet_serve.training import run as run_module
    from enet_serve.training.checkpoint import held_out_estimate, training_record
    from enet_serve.training.run import CODE_VERSION_ENV, code_version

    monkeypatch.delenv(CODE_VERSION_ENV, raising=False)
    # outside a checkout, nothing is known; in one, the commit, and `-dirty` with uncommitted changes
    assert code_version(tmp_path) is None
    repo = tmp_path / "repo"
    (repo / "inner").mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "f").write_text("1")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert code_version(repo) == head[:12]
    (repo / "f").write_text("2")
    assert code_version(repo) == head[:12] + "-dirty"
    # code installed inside another checkout (a virtualenv in it) is not that checkout's commit
    assert code_version(repo / "inner") is None
    # a copy without .git (a GPU machine) is told its commit by the command's environment
    monkeypatch.setenv(CODE_VERSION_ENV, "abc123")
    assert code_version(tmp_path) == "abc123"

    versions = iter(["aaaa", "bbbb-dirty", "cccc"])
    monkeypatch.setattr(run_module, "code_version", lambda: next(versions))
    recipe = SegmentationRecipe(epochs=3, hold_out_drive="0006R0", train_split="train+val")
    _tiny_run(tmp_path / "run", recipe, ["enet-serve train first", "enet-serve train --resume"])
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["commands"] == ["enet-serve train first", "enet-serve train --resume"]
    assert last["code_versions"] == ["aaaa", "bbbb-dirty"]
    assert training_record(last)["code_versions"] == ["aaaa", "bbbb-dirty"]
    estimate = held_out_estimate(tmp_path / "run")
    assert estimate["commands"] == last["commands"] and estimate["code_versions"] == ["aaaa", "bbbb-dirty"]
    # a run from before code versions were recorded says it does not know, one None per command,
    # and resumed, its new command's version follows them
    del last["code_versions"]
    torch.save(last, tmp_path / "run" / "last.pt")
    assert training_record(last)["code_versions"] == [None, None]
    _tiny_run(tmp_path / "run", recipe, ["enet-serve train --resume again"])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["code_versions"] == [None, None, "cccc"]


def test_a_held_out_run_never_writes_the_shipped_weights_by_default(tmp_path, monkeypatch):
    """A held-out-drive run measures a recipe: resumed or shipped (--ship-only) without naming its drive
    again, it writes into its run directory, not over models/weights/ (a resumed one once did: the default
    followed the command, not the run); a run of all the data ships there."""
    from enet_serve.training import cli as training_cli
    from enet_serve.training import segmentation

    monkeypatch.setattr(training_cli, "WEIGHTS_DIR", tmp_path / "weights")
    held, full = tmp_path / "held", tmp_path / "full"
    _tiny_run(held, SegmentationRecipe(epochs=3, hold_out_drive="0001TP", train_split="train+val"), ["first"])
    _tiny_run(full, SegmentationRecipe(epochs=3, train_split="train+val"), ["first"])
    written = {}
    monkeypatch.setattr(segmentation, "train_segmentation",
                        lambda data, run_dir, recipe, **kw: written.update(kw, recipe=recipe) or {"epoch": 2})
    assert main(["train", "enet-camvid", "--resume", "--run-dir", str(held), "--no-progress"]) == 0
    assert written["recipe"].hold_out_drive == "0001TP" and written["weights_out"] == held / "best.pth"
    assert main(["train", "enet-camvid", "--resume", "--run-dir", str(full), "--no-progress"]) == 0
    assert written["weights_out"] == tmp_path / "weights" / "enet-camvid.pth"

    assert main(["train", "enet-camvid", "--ship-only", "--run-dir", str(held)]) == 0
    assert (held / "best.pth").is_file() and not (tmp_path / "weights").exists()
    assert main(["train", "enet-camvid", "--ship-only", "--run-dir", str(full)]) == 0
    assert (tmp_path / "weights" / "enet-camvid.pth").is_file()


def test_which_epochs_are_scored():
    """Every eval_every-th epoch and the last; the whole-frame epochs too where the run picks its epoch
    on frames it never trained on (the best may ship), not in a fixed schedule (train+val), whose scores
    there would only cost time; never the encoder stage's. The GPU kit plans its budget with the same rule."""
    from enet_serve.training.kit import Timing

    def scored(**fields):
        recipe = SegmentationRecipe(epochs=12, full_epochs=4, eval_every=5, **fields)
        return [e + 1 for e in range(recipe.epochs) if recipe.scores(e)], recipe

    assert scored(train_split="train+val")[0] == [5, 10, 12]
    assert scored(train_split="train+val", hold_out_drive="0006R0")[0] == [5, 9, 10, 11, 12]
    assert scored(train_split="train")[0] == [5, 9, 10, 11, 12]  # val is unseen: it picks the epoch
    assert scored(train_split="train+val", encoder_epochs=6)[0] == [10, 12]
    recipe = scored(train_split="train+val")[1]
    assert Timing(crop_s=1.0, full_s=4.0, eval_s=100.0, setup_s=0.0).cost(recipe) == 8 * 1.0 + 4 * 4.0 + 3 * 100.0


@needs_camvid
def test_a_fixed_schedule_scores_its_last_epoch_only_where_nothing_picks(tmp_path):
    """The training loop follows the recipe's rule: a train+val run scores no whole-frame epoch but its last,
    a held-out run every one of them (it ships the best)."""
    torch.set_num_threads(2)
    for name, drive in (("all", None), ("held", "0006R0")):
        recipe = SegmentationRecipe(epochs=3, full_epochs=2, crop=(96, 128), batch_size=4, eval_every=5,
                                    train_split="train+val", hold_out_drive=drive)
        train_segmentation(DEFAULT_CAMVID, tmp_path / name, recipe, limit=4, progress=False, device="cpu")
    scored = {name: ["val" in json.loads(line) for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]
              for name in ("all", "held")}
    assert scored == {"all": [False, False, True], "held": [False, True, True]}
