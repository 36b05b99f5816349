"""`enet-serve serve | export | train | eval | train-kit | models | bench`.

Each sub-command's module is imported only when it runs, so `enet-serve serve` needs only the
serving dependencies (no torch), and `export`/`train` only the export extra.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name: (module, add-arguments function, run function, help)
COMMANDS = {
    "serve": ("enet_serve.service.cli", "add_arguments", "run", "serve the model repository over HTTP"),
    "export": ("enet_serve.export.cli", "add_arguments", "run", "export an architecture to ONNX FP32/FP16 into the model repository"),
    "train": ("enet_serve.training.cli", "add_train_arguments", "run_train", "train a shipped model (enet-camvid, lenet5-fashion)"),
    "eval": ("enet_serve.training.cli", "add_eval_arguments", "run_eval", "score PyTorch and each ONNX file of a model (FP32, FP16, INT8, ...) side by side"),
    "train-kit": ("enet_serve.training.cli", "add_kit_arguments", "run_kit", "pack CamVid for a GPU machine; there, choose ENet's recipe on a held-out drive and train the shipped model in a time budget"),
    "models": ("enet_serve.models.cli", "add_arguments", "run", "list the architectures with their specs"),
    "bench": ("enet_serve.bench.cli", "add_arguments", "run", "benchmarks: raw runtime, service load"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enet-serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the chosen sub-command's module is imported (its arguments come from it).
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, add, run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            getattr(mod, add)(p)
            p.set_defaults(_run=getattr(mod, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
