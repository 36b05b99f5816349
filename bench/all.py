"""`enet-serve bench all`: every benchmark BENCHMARKS.md reports, then the report, in one command.

    enet-serve bench all            # ~15-20 minutes on the project's 2-core machine
    enet-serve bench all --quick    # a smoke run of the harness (about a minute); results go to a temporary
                                    # directory and the report to a copy, nothing committed is touched

Order: precision (in-process, FP32 vs INT8 at three sizes), the article's architectures, the service
against its peers and the limit, memory, then `bench report`.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from enet_serve.bench import architectures, compare, memory, precision, report
from enet_serve.paths import REPO_ROOT

ARTICLE_ARCHS = "resnet18,alexnet,vgg16,squeezenet1_0,mobilenet_v1,enet"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smoke run into a temporary directory")
    p.add_argument("--setup", action="store_true", help="create the peers' environments (pip) before the run")
    p.add_argument("--results", type=Path, default=report.RESULTS)
    p.add_argument("--out", type=Path, default=report.BENCHMARKS)


def _args(module, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    tmp = None
    results, out = args.results, args.out
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="enet-bench-quick-"))
        results, out = tmp / "results", tmp / "BENCHMARKS.md"
        results.mkdir()
        shutil.copy(REPO_ROOT / "BENCHMARKS.md", out)
    results.mkdir(parents=True, exist_ok=True)
    q = args.quick
    steps = [
        (precision, ["--sizes", "360x480", "--rounds", "1", "--seconds", "0.2"] if q else [],
         results / "precision.json"),
        (architectures, ["--models", "lenet5" if q else ARTICLE_ARCHS, "--batch", "1,8", "--seconds",
                         "0.2" if q else "2"], results / "architectures.json"),
        (compare, ["--quick"] if q else (["--setup"] if args.setup else []), results / "peers.json"),
        (memory, ["--variant", "default", "--overload", "16", "--duration", "3"] if q else [], results / "memory.json"),
    ]
    for module, argv, json_path in steps:
        print(f"== bench {module.__name__.rsplit('.', 1)[-1]} {' '.join(argv)}", flush=True)
        rc = module.run(_args(module, [*argv, "--json", str(json_path)]))
        if rc:
            return rc
    return report.run(argparse.Namespace(results=results, out=out, no_plots=False)) or \
        (print(f"quick run: results in {results}, report {out}") or 0 if q else 0)
