"""`enet-serve train RECIPE`, `enet-serve eval NAME` and `enet-serve train-kit pack|run`."""
from __future__ import annotations

import argparse
from pathlib import Path

from enet_serve.paths import REPO_ROOT, RUNS_DIR, WEIGHTS_DIR

RECIPES = ("enet-camvid", "lenet5-fashion")
DEFAULT_PACK = REPO_ROOT / "build" / "camvid-pack.tar"  # build/ is git-ignored; `carry` takes it to a GPU machine


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", choices=RECIPES, help="what to train")
    p.add_argument("--data", type=Path, help="dataset directory or CamVid pack (default: ../shared/datasets/camvid, "
                   "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=int, help="total epochs (default: the recipe's)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the recipe's)")
    p.add_argument("--full-epochs", type=int, help="enet-camvid: how many of the last epochs train on whole frames")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="enet-camvid: crop size of the other epochs")
    p.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="enet-camvid: random scale range before cropping (1 1: none)")
    p.add_argument("--jitter", type=float, help="enet-camvid: colour jitter amount (0: none)")
    p.add_argument("--lovasz", type=float, metavar="W",
                   help="enet-camvid: add W x the Lovász-softmax loss (a surrogate of mIoU) to the cross-entropy (0: none)")
    p.add_argument("--train-split", help="enet-camvid: the CamVid splits to train on, joined by + (default: train; "
                   "the shipped model: train+val)")
    p.add_argument("--encoder-epochs", type=int, help="enet-camvid: ENet's two-stage schedule: train the encoder alone "
                   "on 1/8-size labels for this many first epochs, then the whole network (default: 0, one stage)")
    p.add_argument("--workers", type=int, default=0, help="augment in this many DataLoader processes (for a GPU)")
    p.add_argument("--eval-every", type=int, help="enet-camvid: score every N epochs and the last (and every full-frame epoch of a run that picks its epoch on unseen frames; default: the recipe's)")
    p.add_argument("--hold-out-drive", metavar="DRIVE",
                   help="enet-camvid: leave this drive (e.g. 0006R0) out of the training splits and pick the epoch on it")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--init-from", type=Path, metavar="FILE",
                   help="enet-camvid: start a new run from these weights (a checkpoint or models/weights/*.pth)")
    p.add_argument("--run-dir", type=Path, help="checkpoints and history (default: runs/RECIPE)")
    p.add_argument("--weights-out", type=Path, help="where to write the best weights (default: models/weights/RECIPE.pth; "
                   "RUN_DIR/best.pth for a --hold-out-drive run)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--seed", type=int, help="random seed (default: 0; with --resume, the run's)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--ship-only", action="store_true",
                   help="train nothing: write --weights-out from RUN_DIR's checkpoints (e.g. to ship an unfinished run)")
    p.add_argument("--held-out-run", type=Path, action="append", default=[], metavar="RUN_DIR",
                   help="with --ship-only: record this held-out-drive run's score as the estimate on unseen streets "
                   "(a run directory, or the record --save-estimate wrote of one)")
    p.add_argument("--save-estimate", type=Path, metavar="FILE",
                   help="train nothing: write RUN_DIR's held-out estimate to FILE (JSON), a record --held-out-run "
                   "takes in place of the run directory (commit it: run directories are not kept)")
    p.add_argument("--score-on", type=Path, metavar="DIR",
                   help="enet-camvid, with --ship-only: re-score the shipped epoch (val) and the held-out runs on this "
                   "CamVid directory's original frames (for runs trained on a JPEG pack: then `eval` reproduces them)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (for logs)")


def run_train(args: argparse.Namespace) -> int:
    from enet_serve.training.datasets import DatasetError

    try:
        return _train(args)
    except (FileNotFoundError, FileExistsError, ValueError, DatasetError) as e:  # what the arguments got wrong
        print(f"enet-serve train: {e}")
        return 2


def _train(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or RUNS_DIR / args.recipe
    if args.save_estimate:
        from enet_serve.training.checkpoint import save_held_out_estimate

        estimate = save_held_out_estimate(run_dir, args.save_estimate)
        last = estimate.get("last_epoch", {}).get("held_out", {}).get("mIoU")
        print(f"{run_dir}: held-out estimate on {estimate['drive']} (best {estimate['held_out']['mIoU']}, "
              f"last epoch {last}) written to {args.save_estimate}")
        return 0
    if args.ship_only:
        from enet_serve.training.checkpoint import ship_weights
        from enet_serve.training.run import saved_recipe

        # the best epoch where the run picked one on data it did not train on, else its last
        pick = "best" if args.recipe == "enet-camvid" and (run_dir / "best.pt").is_file() else "last"
        weights_out = _weights_out(args, run_dir, (saved_recipe(run_dir) or {}).get("hold_out_drive"))
        shipped = ship_weights(run_dir, weights_out, pick=pick, held_out_runs=args.held_out_run)
        if args.score_on:
            from enet_serve.training.rescore import rescore_shipped

            shipped = rescore_shipped(weights_out, args.score_on, args.held_out_run)
        print(f"{args.recipe}: epoch {shipped['training']['epoch_shipped']} of {shipped['training']['epochs']} "
              f"shipped to {weights_out}: {shipped['metrics']}")
        return 0
    from enet_serve.training.run import resumed_recipe

    if args.recipe == "enet-camvid":
        from enet_serve.paths import DEFAULT_CAMVID
        from enet_serve.training.segmentation import SegmentationRecipe, train_segmentation

        # --resume: the run's own recipe; the options given must agree with it (TrainingRun checks)
        saved = resumed_recipe(run_dir, SegmentationRecipe) if args.resume else None
        recipe = saved or SegmentationRecipe()
        if args.seed is not None:
            recipe.seed = args.seed
        if args.epochs:
            recipe.epochs = args.epochs
            if saved is None:
                recipe.full_epochs = min(recipe.full_epochs, max(1, args.epochs // 5))
        if args.full_epochs is not None:
            recipe.full_epochs = args.full_epochs
        if args.lr:
            recipe.lr = args.lr
        if args.crop:
            recipe.crop = tuple(args.crop)
        if args.scale:
            recipe.scale = tuple(args.scale)
        if args.jitter is not None:
            recipe.jitter = args.jitter
        if args.lovasz is not None:
            recipe.lovasz = args.lovasz
        if args.train_split:
            recipe.train_split = args.train_split
        if args.hold_out_drive:
            recipe.hold_out_drive = args.hold_out_drive
        if args.encoder_epochs is not None:
            recipe.encoder_epochs = args.encoder_epochs
        if args.eval_every:
            recipe.eval_every = args.eval_every
        weights_out = _weights_out(args, run_dir, recipe.hold_out_drive)
        entry = train_segmentation(args.data or DEFAULT_CAMVID, run_dir, recipe, resume=args.resume,
                                   device=args.device, threads=args.threads, weights_out=weights_out, progress=not args.no_progress,
                                   command=_command_line(), init_from=args.init_from, workers=args.workers)
    else:
        from enet_serve.training.classification import ClassificationRecipe, train_classification
        from enet_serve.paths import DEFAULT_FASHION_MNIST

        recipe = (resumed_recipe(run_dir, ClassificationRecipe) if args.resume else None) or ClassificationRecipe()
        if args.seed is not None:
            recipe.seed = args.seed
        if args.epochs:
            recipe.epochs = args.epochs
        if args.lr:
            recipe.lr = args.lr
        weights_out = _weights_out(args, run_dir, hold_out_drive=None)
        entry = train_classification(args.data or DEFAULT_FASHION_MNIST, run_dir, recipe, resume=args.resume,
                                     device=args.device, threads=args.threads, weights_out=weights_out, progress=not args.no_progress,
                                     command=_command_line())
    print(f"{args.recipe}: epoch {entry.get('epoch')} done; weights in {weights_out}")
    return 0


def _weights_out(args: argparse.Namespace, run_dir: Path, hold_out_drive: str | None) -> Path:
    """Where a run writes its weights: --weights-out, else a run holding out a drive (`hold_out_drive`: the
    recipe's, which --resume and --ship-only take from the run, so the command need not name it) writes into
    its run directory, since it measures a recipe and never replaces the shipped weights; else the shipped
    weights."""
    if args.weights_out:
        return args.weights_out
    return run_dir / "best.pth" if hold_out_drive else WEIGHTS_DIR / f"{args.recipe}.pth"


def _command_line() -> str:
    import shlex
    import sys

    return "enet-serve " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name in the repository, e.g. enet-camvid or lenet5-fashion")
    p.add_argument("--data", type=Path, help="dataset directory (default: the recipe's)")
    p.add_argument("--split", help="split to score (default: val for CamVid, test for Fashion-MNIST)")
    p.add_argument("--repository", type=Path, help="model repository (default: model_repository/)")
    p.add_argument("--weights", type=Path, help="PyTorch weights (default: models/weights/NAME.pth)")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--drive", action="append", help="CamVid: score only this drive's frames (e.g. --split train+val "
                   "--drive 0006R0 for a model trained with --hold-out-drive 0006R0)")
    p.add_argument("--confusions", action="store_true", help="segmentation: also where each class's pixels went "
                   "(recall, precision, the classes it is mistaken for)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")


def run_eval(args: argparse.Namespace) -> int:
    import json

    from enet_serve.model_config import ModelConfigError
    from enet_serve.training.datasets import DatasetError
    from enet_serve.training.evaluate import evaluate, format_report

    try:
        report = evaluate(args.name, data=args.data, repository=args.repository, weights=args.weights,
                          split=args.split, limit=args.limit, drives=tuple(args.drive) if args.drive else None,
                          confusions=args.confusions)
    except (FileNotFoundError, KeyError, DatasetError, ModelConfigError) as e:
        print(f"enet-serve eval: {e}")
        return 2
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def add_kit_arguments(p: argparse.ArgumentParser) -> None:
    from enet_serve.training.kit import CANDIDATES, DEFAULT_HOLD_OUT

    sub = p.add_subparsers(dest="kit_command", required=True, metavar="pack|run")
    pack = sub.add_parser("pack", help="pack CamVid train+val into one tar a GPU machine can carry (about 37 MB)")
    pack.add_argument("--data", type=Path, help="CamVid directory (default: ../shared/datasets/camvid)")
    pack.add_argument("--out", type=Path, default=DEFAULT_PACK, help=f"the pack (default: {DEFAULT_PACK.relative_to(REPO_ROOT)})")
    pack.add_argument("--splits", default="train+val", help="the splits to pack, joined by + (default: train+val)")
    pack.add_argument("--quality", type=int, default=95, help="JPEG quality of the images (labels stay PNG)")
    run = sub.add_parser("run", help="on the GPU machine: held-out-drive runs of the candidate recipes and train+val "
                         "runs side by side, in a time budget; writes OUT/summary.json, OUT/enet-camvid.pth, OUT/run-*.tar")
    run.add_argument("--pack", type=Path, default=DEFAULT_PACK, help="the CamVid pack (or a CamVid directory)")
    run.add_argument("--out", type=Path, required=True, help="where the results go (on the device machine: $OUT)")
    run.add_argument("--work", type=Path, help="where the runs' directories go, in a subdirectory named after the visit's start (default: OUT/work; only the chosen runs are packed into OUT)")
    run.add_argument("--budget", type=float, required=True, metavar="SECONDS",
                     help="wall-clock seconds for everything, results written included")
    run.add_argument("--candidate", action="append", choices=sorted(CANDIDATES),
                     help="a recipe to try (repeat; default: all of " + ", ".join(CANDIDATES) + ")")
    run.add_argument("--hold-out-drive", action="append", metavar="DRIVE",
                     help=f"a drive to hold out (repeat to rotate; default: {' '.join(DEFAULT_HOLD_OUT)})")
    run.add_argument("--epochs", type=int, help="a fixed epoch count (default: probe the runs and fit the budget)")
    run.add_argument("--max-epochs", type=int, default=1000, help="the most epochs the budget may buy")
    run.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="override the candidates' crop size")
    run.add_argument("--device", default="cuda", help="cuda (default) or cpu (the end-to-end test)")
    run.add_argument("--workers", type=int, help="DataLoader processes per run (default: the cores shared out)")
    run.add_argument("--compare-with", type=Path, default=WEIGHTS_DIR / "enet-camvid.pth", metavar="WEIGHTS",
                     help="the weights shipped now, whose held-out estimates the winner is set beside "
                          "(default: models/weights/enet-camvid.pth)")


def run_kit(args: argparse.Namespace) -> int:
    from enet_serve.training.datasets import DatasetError

    try:
        if args.kit_command == "pack":
            from enet_serve.paths import DEFAULT_CAMVID
            from enet_serve.training.pack import pack_camvid

            manifest = pack_camvid(args.data or DEFAULT_CAMVID, args.out, args.splits, args.quality)
            frames = {split: m["frames"] for split, m in manifest["splits"].items()}
            print(f"{args.out}: {manifest['bytes'] / 1e6:.1f} MB, frames {frames}, "
                  f"drives {[m['drives'] for m in manifest['splits'].values()]}")
            return 0
        from enet_serve.training.kit import DEFAULT_CANDIDATES, DEFAULT_HOLD_OUT, run_kit as kit

        summary = kit(args.pack, args.out, args.budget, tuple(args.candidate or DEFAULT_CANDIDATES),
                      tuple(args.hold_out_drive or DEFAULT_HOLD_OUT), work=args.work, device=args.device,
                      epochs=args.epochs, max_epochs=args.max_epochs, crop=tuple(args.crop) if args.crop else None,
                      workers=args.workers, compare_with=args.compare_with)
    except (FileNotFoundError, DatasetError, RuntimeError) as e:
        print(f"enet-serve train-kit: {e}")
        return 2
    return 0 if summary.get("winner") else 1
