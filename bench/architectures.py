"""The architecture table: every registered architecture exported to ONNX FP32 and timed in-process.

    enet-serve bench architectures [--models lenet5,resnet18] [--batch 1,8] [--threads 2] [--markdown]

Each architecture is exported with random weights into a temporary repository (speed does not
depend on the weights' values; the graph is the one a trained export gets, pre- and post-processing
included), then run with onnxruntime on the CPU at its native input size: ms per image at each batch
size and images/s at the largest. Next to it the registry's parameters, GFLOPs and reference
accuracy, so the trade-off the article's architectures made is on one page, measured on this machine.
Needs the dev install (torch, for the export).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from enet_serve.bench.onnx_runtime import input_batch, make_session, measure
from enet_serve.model_config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated architectures (default: every registered one)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--threads", type=int, default=2, help="intra_op_num_threads (default 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5, help="at least this many timed runs per batch size")
    p.add_argument("--seconds", type=float, default=2.0, help="and at least this long per batch size")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--json", type=Path, help="also write the rows here")


def measure_architecture(arch: str, batches: list[int], threads: int, warmup: int, runs: int,
                         seconds: float) -> dict:
    """Export `arch` (FP32, random init) into a temporary directory and time it; one table row."""
    from enet_serve.export import export_model
    from enet_serve.models import get_spec

    spec = get_spec(arch)
    h, w = spec.input_size
    with tempfile.TemporaryDirectory(prefix="enet-bench-arch-") as tmp:
        t0 = time.perf_counter()
        model_dir = export_model(arch, Path(tmp), arch, random_init=True, precisions=("fp32",), check=False)
        export_s = time.perf_counter() - t0
        path = model_dir / load_config(model_dir).files["fp32"].path
        session = make_session(path, threads, "all")
        ms_per_image = {}
        for b in batches:
            times = measure(session, input_batch(session, b, h, w), warmup, runs, seconds)
            ms_per_image[b] = statistics.median(times) * 1e3 / b
        size_mb = path.stat().st_size / 1e6
    ref = spec.reference or {}
    return {"arch": arch, "task": spec.task, "input": f"{spec.input_channels}x{h}x{w}", "params": spec.params,
            "gflops": spec.gflops, "reference": f"{ref.get('metric', '')} {ref.get('value', '')}".strip(),
            "fp32_mb": round(size_mb, 1), "ms_per_image": {str(b): round(v, 2) for b, v in ms_per_image.items()},
            "images_per_s": round(1e3 / ms_per_image[max(batches)], 1), "export_s": round(export_s, 1)}


def _line(row: dict, batches: list[int]) -> str:
    ms = "".join(f"{row['ms_per_image'][str(b)]:>11.2f}" for b in batches)
    return (f"{row['arch']:<15}{row['input']:>11}{row['params']:>13,}{row['gflops']:>8.3f}{row['fp32_mb']:>9.1f}"
            f"{ms}{row['images_per_s']:>9.1f}  {row['reference']}")


def run(args: argparse.Namespace) -> int:
    from enet_serve.models import list_models

    batches = sorted({int(b) for b in args.batch.split(",") if b.strip()})
    names = [n.strip() for n in args.models.split(",")] if args.models else list_models()
    known = set(list_models())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown architecture(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__} CPU, {args.threads} threads, FP32, native input sizes")
    header = (f"{'arch':<15}{'input':>11}{'params':>13}{'GFLOPs':>8}{'MB':>9}"
              + "".join(f"{f'ms/img b{b}':>11}" for b in batches) + f"{'img/s':>9}  reference")
    print(header, flush=True)
    rows = []
    for name in names:
        row = measure_architecture(name, batches, args.threads, args.warmup, args.runs, args.seconds)
        rows.append(row)
        print(_line(row, batches), flush=True)
    if args.markdown:
        print()
        print("| architecture | input | parameters | GFLOPs | FP32 MB | "
              + " | ".join(f"ms/image, batch {b}" for b in batches) + f" | images/s (batch {max(batches)}) | reference |")
        print("|---" * (6 + len(batches) + 1) + "|")
        for r in rows:
            print(f"| {r['arch']} | {r['input']} | {r['params']:,} | {r['gflops']:.3f} | {r['fp32_mb']} | "
                  + " | ".join(f"{r['ms_per_image'][str(b)]:.2f}" for b in batches)
                  + f" | {r['images_per_s']} | {r['reference']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    from enet_serve.bench import run_as_script

    run_as_script(__name__)
