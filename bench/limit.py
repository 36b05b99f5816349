"""The CPU limit of one ONNX file in-process, the yardstick of the load benchmarks.

The best of two ways to use every core:
- one session with all the cores (intra-op threads = cores), at its best batch size;
- one single-thread session per core, side by side (one Python thread each; onnxruntime releases the
  GIL), at batch 1: no thread synchronisation inside a kernel, which on a 2-vCPU VM is what a
  two-thread session loses (BENCHMARKS.md).
Both on real frames, measured one after the other in the same process.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from enet_serve.bench.onnx_runtime import measure


def _session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def all_cores(path: Path, frames: list[np.ndarray], batches: list[int], seconds: float, cores: int) -> dict:
    """Images/s of one session with `cores` threads per batch size."""
    sess = _session(path, cores)
    name = sess.get_inputs()[0].name
    rows = {}
    for b in batches:
        x = np.stack([frames[i % len(frames)] for i in range(b)])
        times = measure(sess, {name: x}, warmup=1, runs=2, min_seconds=seconds)
        rows[b] = {"median_ms": statistics.median(times) * 1e3, "images_per_s": b / statistics.median(times)}
    return rows


def side_by_side(path: Path, frames: list[np.ndarray], seconds: float, cores: int) -> dict:
    """Images/s of `cores` single-thread sessions running batch 1 at the same time."""
    sessions = [_session(path, 1) for _ in range(cores)]
    name = sessions[0].get_inputs()[0].name
    for s in sessions:
        s.run(None, {name: frames[0][None]})
    counts = [0] * cores
    latencies: list[list[float]] = [[] for _ in range(cores)]
    start = threading.Barrier(cores + 1)
    stop = threading.Event()

    def work(k: int) -> None:
        start.wait()
        i = k
        while not stop.is_set():
            t0 = time.perf_counter()
            sessions[k].run(None, {name: frames[i % len(frames)][None]})
            latencies[k].append(time.perf_counter() - t0)
            counts[k] += 1
            i += cores

    threads = [threading.Thread(target=work, args=(k,)) for k in range(cores)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_latencies = [x for xs in latencies for x in xs]
    return {"sessions": cores, "images_per_s": sum(counts) / elapsed,
            "median_ms": statistics.median(all_latencies) * 1e3}


def measure_limit(path: Path, frames: list[np.ndarray], batches: list[int] = (1, 2, 4, 8), seconds: float = 3.0,
                  cores: int | None = None) -> dict:
    """{"all_cores": {batch: row}, "side_by_side": row, "best": {"how", "images_per_s", ...}}."""
    cores = cores or len(os.sched_getaffinity(0))
    one = all_cores(path, frames, list(batches), seconds, cores)
    many = side_by_side(path, frames, seconds * 2, cores)
    best_b = max(one, key=lambda b: one[b]["images_per_s"])
    candidates = [{"how": f"one {cores}-thread session, batch {best_b}", **one[best_b]},
                  {"how": f"{cores} single-thread sessions side by side, batch 1", **many}]
    best = max(candidates, key=lambda r: r["images_per_s"])
    print(f"  limit: {candidates[0]['how']}: {candidates[0]['images_per_s']:.1f} img/s; "
          f"{candidates[1]['how']}: {candidates[1]['images_per_s']:.1f} img/s", flush=True)
    return {"file": str(path), "cores": cores, "all_cores": one, "side_by_side": many, "best": best}
