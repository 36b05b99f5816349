"""Resident memory of the service: after warm-up, and at the peak of an overload.

    enet-serve bench memory                                   # the default settings and the variants below
    enet-serve bench memory --variant default --overload 96 --duration 20

For each variant (a set of server flags) the service is started with both shipped models, and
once it is ready its resident memory (VmRSS) is read from /proc; the high-water mark is then reset
(`/proc/PID/clear_refs`) and `--overload` clients POST CamVid frames to /segment for `--duration`
seconds; the peak is the process's VmHWM afterwards (and the largest RSS sampled every 50 ms, where
the kernel does not allow the reset). The service's own `process_resident_memory_bytes` (in /metrics)
is recorded beside it. Results: bench/results/memory.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

from enet_serve.bench import harness
from enet_serve.bench.load import DEFAULT_DATA, drive, load_frames, to_jpeg
from enet_serve.paths import DEFAULT_REPOSITORY, REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
SHIPPED = ["enet-camvid", "lenet5-fashion"]
# What each variant changes against the defaults ("measure which"): the defaults warm only the batch
# sizes the tuning keeps; the older behaviour warmed every size up to max_batch_size.
VARIANTS = {
    "default": [],
    "cpu arena off": ["--no-cpu-arena"],
    "warm every size (before)": ["--warm-batch-sizes", "all"],
    "max batch 1": ["--max-batch-size", "1"],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", action="append", choices=list(VARIANTS),
                   help="variants to measure (repeatable; default: all)")
    p.add_argument("--overload", type=int, default=96, help="clients of the overload (default 96)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of overload (default 20)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--models", default=",".join(SHIPPED), help="models the service loads (default: both shipped)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--json", type=Path, default=RESULTS / "memory.json", help="results file")


def metrics_rss_mib(url: str) -> float | None:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return None


def measure_variant(name: str, flags: list[str], args, jpegs: list[bytes]) -> dict:
    port = harness.free_port()
    models = [m for m in args.models.split(",") if m]
    with harness.Server(f"service ({name})", harness.service_command(port, args.repository, models, flags), port) as srv:
        pid = srv.proc.pid
        time.sleep(1.0)  # let the warm-up's last allocations settle
        warm = harness.rss_mib(pid)
        warm_metrics = metrics_rss_mib(srv.url)
        reset = harness.reset_peak(pid)
        sampled = [warm]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                sampled.append(harness.rss_mib(pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = asyncio.run(drive(srv.url, jpegs, args.overload, args.duration, 2.0, "png", {}))
        stop.set()
        sampler.join()
        peak = max(max(sampled), harness.peak_rss_mib(pid) if reset else 0.0)
        after = harness.rss_mib(pid)
    row = {"variant": name, "flags": flags, "models": models, "after_warmup_mib": round(warm, 1),
           "metrics_after_warmup_mib": round(warm_metrics, 1) if warm_metrics else None,
           "overload_clients": args.overload, "overload_peak_mib": round(peak, 1),
           "peak_from": "VmHWM" if reset else "sampled RSS", "after_overload_mib": round(after, 1),
           "overload_images_per_s": round(load["images_per_s"], 2), "overload_p99_ms": round(load["p99_ms"], 1),
           "overload_errors": load["errors"]}
    print(f"  {name:28s} after warm-up {warm:6.1f} MiB, overload peak {peak:6.1f} MiB "
          f"({args.overload} clients: {load['images_per_s']:.1f} img/s, errors {load['errors'] or 0})", flush=True)
    return row


def run(args: argparse.Namespace) -> int:
    frames = load_frames(args.data, 16)
    jpegs = [to_jpeg(f, 90) for f in frames]
    rows = [measure_variant(name, VARIANTS[name], args, jpegs) for name in (args.variant or list(VARIANTS))]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "memory", "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return 0
