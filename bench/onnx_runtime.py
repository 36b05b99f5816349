"""Raw onnxruntime speed of one exported graph, in-process, no service around it.

    python -m enet_serve.bench.onnx_runtime [MODEL] [--batch 1,2,4,8] [--size 360x480] [--threads 2] [--profile]

MODEL is an .onnx file or a model directory of the repository (its config.json names the files;
`--precision` picks one). Default: model_repository/enet-camvid, or, where that is not exported
yet, a freshly exported random-init ENet (timings do not depend on the weights' values).

For each batch size: a few warm-up runs, then repeated runs on a random uint8 NHWC batch; the
table gives the median and 90th percentile per frame (run time / batch) and frames per second.
`--profile` runs onnxruntime's profiler at the first batch size and prints the ops that took the
most time (by op type, and the slowest nodes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from enet_serve.model_config import CONFIG_NAME, FILE_KEYS, ModelConfigError, load_config
from enet_serve.paths import DEFAULT_REPOSITORY

DEFAULT_MODEL = DEFAULT_REPOSITORY / "enet-camvid"

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def resolve_model(model: Path | None, precision: str, workdir: Path) -> Path:
    """The .onnx file to measure: a file as given, a repository directory's file of `precision`, or a fresh export."""
    if model is None:
        if (DEFAULT_MODEL / CONFIG_NAME).is_file():
            model = DEFAULT_MODEL
        else:
            from enet_serve.export import export_model  # needs torch; only when nothing is exported yet

            print(f"{DEFAULT_MODEL} is not exported: exporting a random-init ENet into {workdir}", file=sys.stderr)
            model = export_model("enet", workdir, "enet-bench", random_init=True, precisions=(precision,), check=False)
    model = Path(model)
    if model.is_dir():
        try:
            files = load_config(model).files
        except ModelConfigError as e:
            raise SystemExit(str(e)) from None
        if precision not in files:
            raise SystemExit(f"{model}: no {precision} file (has {', '.join(files)})")
        return model / files[precision].path
    if not model.is_file():
        raise SystemExit(f"no model file or directory at {model}")
    return model


def make_session(path: Path, threads: int, opt_level: str, profile_prefix: str | None = None,
                 optimized_path: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def input_batch(session: ort.InferenceSession, batch: int, height: int, width: int, seed: int = 0) -> dict:
    """A random batch for the session's first input: uint8 NHWC images (the graph contract), or, for
    other graphs, float NCHW with the dynamic sides set to height x width."""
    inp = session.get_inputs()[0]
    shape = list(inp.shape)
    rng = np.random.default_rng(seed)
    if inp.type == "tensor(uint8)":  # (N, H, W, C)
        dims = [batch, height, width, 3]
    else:  # (N, C, H, W)
        dims = [batch, 3, height, width]
    dims = [d if isinstance(d, int) and i > 0 else dims[i] for i, d in enumerate(shape)] if len(shape) == 4 else [batch]
    if inp.type == "tensor(uint8)":
        return {inp.name: rng.integers(0, 256, size=dims, dtype=np.uint8)}
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    return {inp.name: rng.standard_normal(dims).astype(dtype)}


def measure(session: ort.InferenceSession, feed: dict, warmup: int, runs: int, min_seconds: float) -> list[float]:
    """Seconds per run: `warmup` runs discarded, then at least `runs` runs and `min_seconds` of running."""
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return times


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def print_profile(profile_file: str, top: int) -> None:
    events = json.loads(Path(profile_file).read_text())
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_type[op] += e["dur"]
        by_node[(e["name"][: -len("_kernel_time")], op)] += e["dur"]
        count[op] += 1
    runs = max(runs, 1)
    total = sum(by_type.values())
    print(f"\nprofile: {runs} runs, kernel time {total / runs / 1000:.2f} ms per run")
    print(f"{'op type':<28}{'ms/run':>9}{'share':>8}{'nodes':>7}")
    for op, us in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{op:<28}{us / runs / 1000:>9.2f}{100 * us / total:>7.1f}%{count[op] // runs:>7}")
    print(f"\n{'slowest nodes':<60}{'op':<22}{'ms/run':>9}")
    for (name, op), us in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{name[:59]:<60}{op:<22}{us / runs / 1000:>9.2f}")


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", type=Path, help=f"an .onnx file or a model directory (default {DEFAULT_MODEL})")
    p.add_argument("--precision", default="fp32", choices=FILE_KEYS, help="file of a model directory (int8: exported "
                   "with `export --precision int8`)")
    p.add_argument("--batch", default="1,2,4,8", help="comma-separated batch sizes (default 1,2,4,8)")
    p.add_argument("--size", type=parse_size, default=(360, 480), help="HxW of dynamic-size inputs (default 360x480)")
    p.add_argument("--threads", type=int, default=2, help="intra_op_num_threads (default 2)")
    p.add_argument("--opt-level", default="all", choices=list(OPT_LEVELS), help="graph optimisation (default all)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10, help="at least this many timed runs per batch size")
    p.add_argument("--seconds", type=float, default=2.0, help="and at least this long per batch size")
    p.add_argument("--profile", action="store_true", help="print the top ops from onnxruntime's profiler")
    p.add_argument("--top", type=int, default=15, help="rows of the profile tables")
    p.add_argument("--save-optimized", type=Path, help="write the graph as optimised by onnxruntime here")


def run(args: argparse.Namespace) -> int:
    batches = [int(b) for b in args.batch.split(",") if b.strip()]

    with tempfile.TemporaryDirectory(prefix="enet-bench-") as tmp:
        path = resolve_model(args.model, args.precision, Path(tmp))
        session = make_session(path, args.threads, args.opt_level, optimized_path=args.save_optimized)
        h, w = args.size
        print(f"model {path} ({path.stat().st_size / 1e6:.1f} MB), onnxruntime {ort.__version__} CPU, "
              f"{args.threads} threads, opt level {args.opt_level}, input {h}x{w}")
        print(f"{'batch':>5}{'ms/run':>10}{'ms/frame':>10}{'p90/frame':>11}{'frames/s':>10}{'runs':>6}")
        for batch in batches:
            feed = input_batch(session, batch, h, w)
            times = measure(session, feed, args.warmup, args.runs, args.seconds)
            med = statistics.median(times)
            print(f"{batch:>5}{med * 1e3:>10.2f}{med * 1e3 / batch:>10.2f}"
                  f"{percentile(times, 90) * 1e3 / batch:>11.2f}{batch / med:>10.1f}{len(times):>6}", flush=True)
        if args.profile:
            prof = make_session(path, args.threads, args.opt_level, profile_prefix=os.path.join(tmp, "ort-profile"))
            feed = input_batch(prof, batches[0], h, w)
            for _ in range(args.warmup):
                prof.run(None, feed)
            # The warm-up runs are in the file too; they count in the per-run averages as ordinary runs.
            for _ in range(max(args.runs, 5)):
                prof.run(None, feed)
            print_profile(prof.end_profiling(), args.top)
    return 0


if __name__ == "__main__":
    from enet_serve.bench import run_as_script

    run_as_script(__name__)
