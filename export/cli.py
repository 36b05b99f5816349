"""`enet-serve export ARCH [--name NAME] (--weights FILE | --random-init) [--num-classes K]
[--set KEY=VALUE ...] [--precision fp32,fp16,int8] [--int8-ungated] [--repository DIR]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enet_serve.export.repository import DEFAULT_REPOSITORY


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", metavar="ARCH", help="a registered architecture (see `enet-serve models`)")
    p.add_argument("--name", help="model name in the repository (default: ARCH)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, metavar="FILE",
                        help="a torchvision .pth state_dict or a checkpoint of `enet-serve train`")
    source.add_argument("--random-init", action="store_true", help="random weights (the config says untrained)")
    p.add_argument("--num-classes", type=int, metavar="K", help="outputs of the model (default: the checkpoint's, "
                   "else the architecture's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="builder_args",
                   help="an argument of the architecture's builder (repeatable), e.g. transform_input=true for "
                   "torchvision's googlenet/inception_v3 weights; VALUE is read as JSON (true, 0.2, \"text\") "
                   "or else as a string")
    p.add_argument("--precision", default="fp32,fp16", help="comma-separated: fp32, fp16, int8 (default: fp32,fp16; "
                   "with fp32, models with CPU-only rewrites also get fp32_gpu, the FP32 graph for GPUs; int8 is "
                   "quantized from fp32 for CPUs, calibrated on training frames and gated on accuracy)")
    p.add_argument("--int8-ungated", action="store_true",
                   help="int8 of trained weights where this machine lacks their data set: calibrated on random "
                   "images, accuracy not gated (without it such an export stops)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                   help=f"model repository directory (default: {DEFAULT_REPOSITORY})")
    p.add_argument("--no-check", action="store_true", help="skip the checks against PyTorch (not for shipping)")


def run(args: argparse.Namespace) -> int:
    from enet_serve.export.errors import ExportError
    from enet_serve.export.exporter import ExportOptions, export

    try:
        options = ExportOptions(weights=args.weights, random_init=args.random_init, num_classes=args.num_classes,
                                precisions=args.precision, check=not args.no_check,
                                builder_args=parse_builder_args(args.builder_args), int8_ungated=args.int8_ungated)
        result = export(args.arch, args.repository, args.name, options)
    except ExportError as e:
        print(f"enet-serve export: error: {e}", file=sys.stderr)
        return 1
    for r in result.checks:
        print(f"  {r.line()}")
    for note in result.notes:
        print(f"  note: {note}")
    cfg = result.config
    files = ", ".join(f"{p} {f['bytes'] / 1e6:.1f} MB" for p, f in cfg["files"].items())
    trained = "trained" if cfg["weights"]["trained"] else "UNTRAINED (random init)"
    print(f"{cfg['name']}: {cfg['architecture']} {cfg['task']}, {cfg['parameters']:,} parameters, "
          f"{trained}, exported to {result.path} ({files})")
    return 0


def parse_builder_args(items: list[str]) -> dict:
    """["transform_input=true", "dropout=0.2"] -> {"transform_input": True, "dropout": 0.2}."""
    import json

    from enet_serve.export.errors import ExportError

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ExportError(f"--set {item!r}: expected KEY=VALUE with KEY a builder argument name")
        if key == "num_classes":
            raise ExportError("--set num_classes=...: use --num-classes")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out
