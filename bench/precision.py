"""ENet FP32 against INT8 in-process, at the article's frame sizes, on 1 and all threads.

    enet-serve bench precision [--sizes 360x480,360x640,720x1280] [--rounds 5] [--seconds 1]

Each (file, size, threads) is timed at batch 1 on random uint8 frames (the speed of a graph does not
depend on the pixels); the files alternate round by round, so a slow spell of the shared machine
touches both alike. The table gives medians over the rounds' medians and INT8's speed-up over FP32.
Results: bench/results/precision.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from enet_serve.bench.limit import _session
from enet_serve.bench.onnx_runtime import measure
from enet_serve.model_config import load_config
from enet_serve.paths import DEFAULT_REPOSITORY, REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_REPOSITORY / "enet-camvid", help="model directory")
    p.add_argument("--sizes", default="360x480,360x640,720x1280", help="HxW frame sizes")
    p.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}", help="intra-op thread counts")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="per file, size and thread count in each round")
    p.add_argument("--json", type=Path, default=RESULTS / "precision.json")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.model)
    files = {k: args.model / cfg.files[k].path for k in ("fp32", "int8") if k in cfg.files}
    if "int8" not in files:
        raise SystemExit(f"{args.model}: no int8 file (enet-serve export ... --precision fp32,int8)")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    samples: dict[tuple, list[float]] = {}
    for t in threads:
        sessions = {k: _session(p, t) for k, p in files.items()}
        for r in range(args.rounds):
            for h, w in sizes:
                x = {"image": rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)}
                for k, s in (sessions.items() if r % 2 == 0 else reversed(sessions.items())):
                    times = measure(s, x, warmup=1, runs=3, min_seconds=args.seconds)
                    samples.setdefault((k, h, w, t), []).append(statistics.median(times) * 1e3)
    rows = []
    for (k, h, w, t), ms in samples.items():
        rows.append({"precision": k, "height": h, "width": w, "threads": t, "median_ms": statistics.median(ms),
                     "round_medians_ms": [round(v, 2) for v in ms]})
    for row in rows:
        if row["precision"] == "int8":
            fp32 = next(o for o in rows if o["precision"] == "fp32" and
                        (o["height"], o["width"], o["threads"]) == (row["height"], row["width"], row["threads"]))
            row["speedup_vs_fp32"] = fp32["median_ms"] / row["median_ms"]
        print(f"  {row['precision']} {row['height']}x{row['width']} {row['threads']} thread(s): "
              f"{row['median_ms']:.1f} ms" + (f" ({row['speedup_vs_fp32']:.2f}x FP32)" if "speedup_vs_fp32" in row else ""),
              flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "precision", "model": str(args.model.name), "rounds": args.rounds,
                                     "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return 0
