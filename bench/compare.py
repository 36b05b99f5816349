"""The service against its peers and its in-process limit, in one run on the same frames and cores.

    enet-serve bench peers                                    # clients 1,4,16,64; every installed peer
    enet-serve bench peers --setup                            # first create the peers' environments
    enet-serve bench peers --quick                            # a smoke run: seconds, FastAPI peer only

1. The limit (bench.limit) of the FP32 file, and of the INT8 file where the model has one.
2. Each target in turn: the service (FP32, and INT8 where exported) and each peer (bench.peers),
   started on a loopback port, driven by bench.load's client (N keep-alive connections POSTing CamVid
   val JPEGs to /segment?format=png, after a warm-up), stopped.
3. The limit again at the end (the machine's speed drifts; both are recorded, the larger is used).
Results: bench/results/peers.json (what `enet-serve bench report` turns into BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import time
from pathlib import Path

from enet_serve.bench import harness
from enet_serve.bench.limit import measure_limit
from enet_serve.bench.load import DEFAULT_DATA, drive, load_frames, to_jpeg
from enet_serve.bench.peers.registry import PEERS
from enet_serve.model_config import load_config
from enet_serve.paths import DEFAULT_REPOSITORY, REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--model", default="enet-camvid")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory of CamVid val PNGs")
    p.add_argument("--clients", default="1,4,16,64", help="comma-separated concurrent client counts")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per client count")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each")
    p.add_argument("--peers", default=",".join(PEERS), help="peers to run (those without an environment are skipped)")
    p.add_argument("--no-int8", action="store_true", help="skip the service's INT8 run")
    p.add_argument("--setup", action="store_true", help="create the peers' virtual environments first (pip)")
    p.add_argument("--quick", action="store_true", help="smoke run: clients 1,4, 3 s each, FastAPI peer, no INT8")
    p.add_argument("--limit-seconds", type=float, default=3.0)
    p.add_argument("--json", type=Path, default=RESULTS / "peers.json")


def versions(python: Path, modules: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({k: m.version(k) for k in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": model, "cores": len(__import__("os").sched_getaffinity(0)), "python": platform.python_version(),
            "avx512_vnni": "avx512_vnni" in flags, "kernel": platform.release()}


def drive_target(name: str, cmd: list[str], port: int, clients: list[int], jpegs: list[bytes], args,
                 ready_timeout: float = 300.0, ready_path: str = "/health/ready") -> list[dict]:
    rows = []
    t0 = time.monotonic()
    with harness.Server(name, cmd, port, ready_path=ready_path, timeout_s=ready_timeout) as srv:
        started = time.monotonic() - t0
        rss = harness.rss_mib(srv.proc.pid)
        for n in clients:
            r = asyncio.run(drive(srv.url, jpegs, n, args.duration, args.warmup, "png", {}))
            r.update(target=name, start_s=round(started, 1), rss_mib_after_start=round(rss, 1))
            rows.append(r)
            print(f"  {name:18s} {n:3d} clients: {r['images_per_s']:6.2f} img/s, median {r['median_ms']:7.1f} ms, "
                  f"p99 {r['p99_ms']:7.1f} ms, errors {r['errors'] or 0}", flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.clients, args.duration, args.warmup, args.peers, args.no_int8 = "1,4", 3.0, 1.0, "fastapi", True
        args.limit_seconds = 1.0
    clients = [int(c) for c in args.clients.split(",")]
    peers = [PEERS[p] for p in args.peers.split(",") if p]
    if args.setup:
        for peer in peers:
            if peer.requirements and peer.python() is None:
                peer.create_env()
    model_dir = args.repository / args.model
    cfg = load_config(model_dir)
    frames = load_frames(args.data, 32)
    jpegs = [to_jpeg(f, 90) for f in frames]
    import onnxruntime

    results: dict = {"benchmark": "peers", "model": args.model, "clients": clients, "duration_s": args.duration,
                     "machine": machine(), "quick": args.quick,
                     "versions": {"onnxruntime": onnxruntime.__version__}, "limit": {}, "rows": [], "skipped": {}}
    results["limit"]["fp32"] = measure_limit(model_dir / cfg.files["fp32"].path, frames, seconds=args.limit_seconds)
    int8 = "int8" in cfg.files and not args.no_int8
    if int8:
        results["limit"]["int8"] = measure_limit(model_dir / cfg.files["int8"].path, frames, seconds=args.limit_seconds)

    targets = [("enet-serve", [])] + ([("enet-serve int8", ["--precision", "int8"])] if int8 else [])
    for name, flags in targets:
        port = harness.free_port()
        cmd = harness.service_command(port, args.repository, [args.model], flags)
        results["rows"] += drive_target(name, cmd, port, clients, jpegs, args)
    for peer in peers:
        python = peer.python()
        if python is None:
            results["skipped"][peer.name] = f"no environment at {peer.env} (run with --setup)"
            print(f"  {peer.name}: skipped ({results['skipped'][peer.name]})", flush=True)
            continue
        if peer.requirements:
            results["versions"].update(versions(python, [r.split("[")[0] for r in peer.requirements]))
        else:
            results["versions"].update(versions(python, ["fastapi", "uvicorn"]))
        port = harness.free_port()
        results["rows"] += drive_target(peer.name, peer.command(port, model_dir.resolve()), port, clients, jpegs, args,
                                        ready_timeout=peer.ready_timeout_s)
    results["limit"]["fp32_end"] = measure_limit(model_dir / cfg.files["fp32"].path, frames,
                                                 seconds=args.limit_seconds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.json}")
    summary(results)
    return 0


def limit_of(results: dict) -> float:
    """The FP32 limit: the larger of the run's start and end measurements."""
    lim = results["limit"]
    return max(lim["fp32"]["best"]["images_per_s"], lim.get("fp32_end", lim["fp32"])["best"]["images_per_s"])


def summary(results: dict) -> None:
    limit = limit_of(results)
    by = {(r["target"], r["clients"]): r for r in results["rows"]}
    for n in results["clients"]:
        svc = by.get(("enet-serve", n))
        if svc is None:
            continue
        line = f"{n:3d} clients: service {svc['images_per_s']:.1f} img/s = {svc['images_per_s'] / limit:.2f} x limit"
        for t in sorted({t for t, _ in by} - {"enet-serve"}):
            if (t, n) in by:
                o = by[(t, n)]
                line += (f"; vs {t}: {svc['images_per_s'] / o['images_per_s']:.2f}x throughput, "
                         f"p99 {o['p99_ms'] / svc['p99_ms']:.2f}x lower" if o["images_per_s"] else f"; {t}: 0 img/s")
        print(line)
