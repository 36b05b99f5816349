"""`enet-serve train RECIPE` and `enet-serve eval NAME`."""
from __future__ import annotations

import argparse
from pathlib import Path

from enet_serve.paths import RUNS_DIR, WEIGHTS_DIR

RECIPES = ("enet-camvid", "lenet5-fashion")


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
    p.add_argument("--train-split", help="enet-camvid: the CamVid splits to train on, joined by + (default: train; "
                   "the shipped model: train+val)")
    p.add_argument("--encoder-epochs", type=int, help="enet-camvid: ENet's two-stage schedule: train the encoder alone "
                   "on 1/8-size labels for this many first epochs, then the whole network (default: 0, one stage)")
    p.add_argument("--workers", type=int, default=0, help="augment in this many DataLoader processes (for a GPU)")
    p.add_argument("--hold-out-drive", metavar="DRIVE",
                   help="enet-camvid: leave this drive (e.g. 0006R0) out of the training splits and pick the epoch on it")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--init-from", type=Path, metavar="FILE",
                   help="enet-camvid: start a new run from these weights (a checkpoint or models/weights/*.pth)")
    p.add_argument("--run-dir", type=Path, help="checkpoints and history (default: runs/RECIPE)")
    p.add_argument("--weights-out", type=Path, help="where to write the best weights (default: models/weights/RECIPE.pth)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--ship-only", action="store_true",
                   help="train nothing: write --weights-out from RUN_DIR's checkpoints (e.g. to ship an unfinished run)")
    p.add_argument("--held-out-run", type=Path, action="append", default=[], metavar="RUN_DIR",
                   help="with --ship-only: record this held-out-drive run's score as the estimate on unseen streets")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (for logs)")


def run_train(args: argparse.Namespace) -> int:
    from enet_serve.training.datasets import DatasetError

    try:
        return _train(args)
    except (FileNotFoundError, DatasetError) as e:
        print(f"enet-serve train: {e}")
        return 2


def _train(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or RUNS_DIR / args.recipe
    weights_out = args.weights_out or WEIGHTS_DIR / f"{args.recipe}.pth"
    if args.ship_only:
        from enet_serve.training.checkpoint import ship_weights

        # the best epoch where the run picked one on data it did not train on, else its last
        pick = "best" if args.recipe == "enet-camvid" and (run_dir / "best.pt").is_file() else "last"
        shipped = ship_weights(run_dir, weights_out, pick=pick, held_out_runs=args.held_out_run)
        print(f"{args.recipe}: epoch {shipped['training']['epoch_shipped']} of {shipped['training']['epochs']} "
              f"shipped to {weights_out}: {shipped['metrics']}")
        return 0
    if args.recipe == "enet-camvid":
        from enet_serve.paths import DEFAULT_CAMVID
        from enet_serve.training.segmentation import SegmentationRecipe, train_segmentation

        recipe = SegmentationRecipe(seed=args.seed)
        if args.epochs:
            recipe.epochs = args.epochs
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
        if args.train_split:
            recipe.train_split = args.train_split
        if args.hold_out_drive:
            recipe.hold_out_drive = args.hold_out_drive
        if args.encoder_epochs is not None:
            recipe.encoder_epochs = args.encoder_epochs
        entry = train_segmentation(args.data or DEFAULT_CAMVID, run_dir, recipe, resume=args.resume,
                                   device=args.device, threads=args.threads, weights_out=weights_out, progress=not args.no_progress,
                                   command=_command_line(), init_from=args.init_from, workers=args.workers)
    else:
        from enet_serve.training.classification import ClassificationRecipe, train_classification
        from enet_serve.paths import DEFAULT_FASHION_MNIST

        recipe = ClassificationRecipe(seed=args.seed)
        if args.epochs:
            recipe.epochs = args.epochs
        if args.lr:
            recipe.lr = args.lr
        entry = train_classification(args.data or DEFAULT_FASHION_MNIST, run_dir, recipe, resume=args.resume,
                                     device=args.device, threads=args.threads, weights_out=weights_out, progress=not args.no_progress,
                                     command=_command_line())
    print(f"{args.recipe}: epoch {entry.get('epoch')} done; weights in {weights_out}")
    return 0


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
    p.add_argument("--json", type=Path, help="also write the report as JSON here")


def run_eval(args: argparse.Namespace) -> int:
    import json

    from enet_serve.model_config import ModelConfigError
    from enet_serve.training.datasets import DatasetError
    from enet_serve.training.evaluate import evaluate, format_report

    try:
        report = evaluate(args.name, data=args.data, repository=args.repository, weights=args.weights,
                          split=args.split, limit=args.limit, drives=tuple(args.drive) if args.drive else None)
    except (FileNotFoundError, KeyError, DatasetError, ModelConfigError) as e:
        print(f"enet-serve eval: {e}")
        return 2
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0
