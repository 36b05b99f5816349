"""`enet-serve bench gpu`: the GPU path, proved on one NVIDIA machine in a few minutes.

    enet-serve bench gpu --repository model_repository --data ../shared/datasets/camvid/val --out runs/gpu

1. The environment: onnxruntime and its providers, the GPU (nvidia-smi), the CUDA, cuDNN and TensorRT
   libraries found (the nvidia-* wheels) and the majors onnxruntime's provider libraries link against.
2. Each plan of the service (TensorRT FP16, CUDA FP16, CUDA FP32), built with the service's own code
   (service/runtime.py, native_size on, so one TensorRT profile spans every size below): session
   creation time, the providers the session reports, and the nodes not placed on the GPU (from
   onnxruntime's profiler).
3. Masks against CPU FP32 on real CamVid val frames: FP32 plans must agree on >= 99.9 % of the pixels,
   FP16 plans on >= 99 %.
4. ENet latency per plan at batch 1 and 8 at 360x480, 640x360 and 1280x720 (landscape: the smaller
   side is the height), the session's run with its host<->device copies.
5. The service itself (device=auto) under 1, 16 and 64 concurrent clients (bench load's client).

It writes gpu.json and gpu.md (for BENCHMARKS.md, the GPU named). Without a CUDA provider (or with
--cpu) it runs in CPU mode: it says so, skips the GPU rows and runs the same steps with the CPU
plans standing in (the FP16 file on the CPU for the FP16 check), so the command is tested here.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from enet_serve.paths import DEFAULT_CAMVID, DEFAULT_REPOSITORY

GPU_PLANS = [  # (label, device, precision, mask agreement needed with CPU FP32)
    ("TensorRT FP16", "tensorrt", "fp16", 0.99),
    ("CUDA FP16", "cuda", "fp16", 0.99),
    ("CUDA FP32", "cuda", "fp32", 0.999),
]
CPU_PLANS = [("CPU FP16 (stand-in)", "cpu", "fp16", 0.99)]
REFERENCE = ("CPU FP32", "cpu", "fp32")
SIZES = "360x480,640x360,1280x720"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository")
    p.add_argument("--model", default="enet-camvid", help="the segmentation model")
    p.add_argument("--data", type=Path, default=DEFAULT_CAMVID / "val", help="directory of CamVid val PNGs")
    p.add_argument("--frames", type=int, default=16, help="frames for the mask comparison")
    p.add_argument("--sizes", default=SIZES, help=f"latency input sizes of landscape frames (the smaller side is "
                   f"the height; default {SIZES})")
    p.add_argument("--batches", default="1,8", help="latency batch sizes (default 1,8)")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per latency row")
    p.add_argument("--clients", default="1,16,64", help="concurrent clients of the service rows")
    p.add_argument("--load-seconds", type=float, default=8.0, help="measured seconds per client count")
    p.add_argument("--cpu", action="store_true", help="CPU mode even where a GPU is found")
    p.add_argument("--skip-service", action="store_true", help="no service rows")
    p.add_argument("--out", type=Path, default=Path("runs/gpu"), help="where gpu.json and gpu.md go")
    p.add_argument("--cache-dir", type=Path, help="TensorRT engine cache (default: OUT/trt-cache)")


# -- 1. the environment ------------------------------------------------------------------------------------

def distributions(pattern: str) -> dict[str, str]:
    rx = re.compile(pattern)
    found = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if rx.fullmatch(name):
            found[name] = dist.version
    return dict(sorted(found.items()))


def nvidia_smi() -> dict[str, str] | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, driver, memory, cap = [s.strip() for s in out.stdout.splitlines()[0].split(",")][:4]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"name": name, "driver": driver, "memory": memory, "compute_capability": cap,
            "driver_cuda": cuda.group(1) if cuda else "unknown"}


def environment(ort) -> dict[str, Any]:
    from enet_serve.service.providers import linked_major, onnxruntime_capi_dir

    capi = onnxruntime_capi_dir()
    links = {}
    if capi is not None:
        for lib, soname in (("cuda", "libcudart"), ("cuda", "libcudnn"), ("tensorrt", "libnvinfer")):
            major = linked_major(capi / f"libonnxruntime_providers_{lib}.so", soname)
            if major is not None:
                links[soname] = major
    return {
        "onnxruntime": ort.__version__,
        "onnxruntime_distributions": distributions(r"onnxruntime(-gpu)?"),
        "available_providers": list(ort.get_available_providers()),
        "gpu": nvidia_smi(),
        "cuda_libraries": distributions(r"nvidia-(cuda-runtime|cudnn|cublas|cufft|curand|cuda-nvrtc)(-cu\d+)?"),
        "tensorrt_libraries": distributions(r"tensorrt(-cu\d+)?(-libs)?"),
        "provider_links": links,  # the majors onnxruntime's provider libraries were built against
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


# -- 2. plans ------------------------------------------------------------------------------------------------

def placement(ort, runtime_mod, path: Path, plan, settings, x: np.ndarray, workdir: Path) -> dict[str, Any]:
    """Nodes by provider, from onnxruntime's profiler over one run of a second session of the plan."""
    so = runtime_mod.session_options(settings, 1, plan.on_gpu)
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / "placement")
    session = ort.InferenceSession(str(path), so, providers=plan.providers)
    session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, tuple[str, str]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            args = e.get("args", {})
            nodes[e["name"][: -len("_kernel_time")]] = (args.get("provider", "?"), args.get("op_name", "?"))
    by_provider: dict[str, int] = {}
    for provider, _ in nodes.values():
        by_provider[provider] = by_provider.get(provider, 0) + 1
    off_gpu = sorted(f"{name} ({op})" for name, (provider, op) in nodes.items() if provider == "CPUExecutionProvider")
    return {"nodes_by_provider": by_provider, "nodes_not_on_gpu": off_gpu if plan.on_gpu else None}


def build_plan(label: str, device: str, precision: str, entry, base_settings, workdir: Path, x: np.ndarray,
               ort, runtime_mod) -> dict[str, Any]:
    settings = base_settings.model_copy(update={"device": device, "precision": precision})
    row: dict[str, Any] = {"plan": label, "device": device, "precision": precision}
    t0 = time.perf_counter()
    try:
        rt = runtime_mod.ModelRuntime.load_plan(entry, settings, device)
    except Exception as e:
        from enet_serve.service.providers import one_line

        row.update(ok=False, error=one_line(e, 500), create_s=time.perf_counter() - t0)
        print(f"  {label}: FAILED after {row['create_s']:.1f} s: {row['error']}", flush=True)
        return row
    row.update(ok=True, create_s=time.perf_counter() - t0, providers=rt.providers, file=rt.path.name,
               execution=rt.describe())
    try:
        row.update(placement(ort, runtime_mod, rt.path, rt.plan, settings, x, workdir))
    except Exception as e:
        row["placement_error"] = str(e)[:300]
    row["_runtime"] = rt
    off = row.get("nodes_not_on_gpu")
    print(f"  {label}: {row['create_s']:.1f} s to create, providers {', '.join(rt.providers)}, file {rt.path.name}, "
          f"nodes {row.get('nodes_by_provider')}, not on the GPU: "
          f"{'n/a' if off is None else (len(off) and ', '.join(off[:8])) or 'none'}", flush=True)
    return row


# -- 3. masks --------------------------------------------------------------------------------------------------

def masks(rt, frames: list[np.ndarray], batch: int = 8) -> np.ndarray:
    session = rt.sessions[0]
    out = [session.run(frames[i:i + batch])[0] for i in range(0, len(frames), batch)]
    return np.concatenate(out)


# -- 4. latency --------------------------------------------------------------------------------------------------

def parse_sizes(text: str) -> list[tuple[str, int, int]]:
    """'360x480,640x360,1280x720' -> [(label, H, W)]: landscape frames, the smaller side is the height."""
    sizes = []
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        a, b = (int(v) for v in item.lower().split("x"))
        sizes.append((item, min(a, b), max(a, b)))
    return sizes


def latency(rt, h: int, w: int, batch: int, seconds: float) -> dict[str, float]:
    session = rt.sessions[0]
    images = list(np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8))
    for _ in range(3):
        session.run(images)
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(images)
        times.append(time.perf_counter() - t0)
        if len(times) >= 2000:
            break
    med = statistics.median(times)
    return {"median_ms": med * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3, "images_per_s": batch / med,
            "runs": len(times)}


# -- 5. the service ------------------------------------------------------------------------------------------------

def service_rows(args, repository: Path, jpegs: list[bytes], cpu_mode: bool, cache_dir: Path) -> list[dict]:
    from enet_serve.bench.load import drive, start_service, stop_service

    server_args = ["--native-size", "--max-batch-size", "8", f"--trt-cache-dir={cache_dir}",
                   f"--device={'cpu' if cpu_mode else 'auto'}"]
    ns = argparse.Namespace(repository=repository, model=args.model, allow_untrained=True, server_arg=server_args)
    t0 = time.perf_counter()
    proc, url = start_service(ns)
    rows = []
    try:
        import httpx

        info = httpx.get(f"{url}/models/{args.model}", timeout=10).json()
        print(f"  service ready in {time.perf_counter() - t0:.1f} s on {info.get('provider')} ({info.get('precision')})",
              flush=True)
        for n in [int(c) for c in args.clients.split(",") if c.strip()]:
            r = asyncio.run(drive(url, jpegs, n, args.load_seconds, min(2.0, args.load_seconds), "png", {}))
            r.update(provider=info.get("provider"), precision=info.get("precision"))
            rows.append(r)
            print(f"  service {n:3d} clients: median {r['median_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"{r['images_per_s']:.1f} img/s, errors {r['errors'] or 0}", flush=True)
    finally:
        stop_service(proc)
    return rows


# -- the command -----------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from enet_serve.service import runtime as runtime_mod
    from enet_serve.service.codecs import resize_image
    from enet_serve.service.providers import CUDA
    from enet_serve.service.repository import ModelRepository
    from enet_serve.service.settings import Settings

    started = time.perf_counter()
    ort = runtime_mod.require_onnxruntime()
    env = environment(ort)
    gpu = env["gpu"]
    cpu_mode = args.cpu or CUDA not in env["available_providers"] or gpu is None
    why = ("--cpu" if args.cpu else "onnxruntime has no CUDA provider" if CUDA not in env["available_providers"]
           else "nvidia-smi finds no GPU")
    print(f"onnxruntime {env['onnxruntime']} {env['onnxruntime_distributions']}; providers: "
          f"{', '.join(env['available_providers'])}")
    print(f"GPU: {gpu or 'none'}; CUDA libraries {env['cuda_libraries'] or 'none'}; TensorRT libraries "
          f"{env['tensorrt_libraries'] or 'none'}; onnxruntime links {env['provider_links'] or 'n/a'}")
    if cpu_mode:
        print(f"CPU MODE ({why}): the GPU rows are skipped; CPU plans stand in for them", flush=True)

    repository = args.repository.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = (args.cache_dir or args.out / "trt-cache").resolve()
    entry = ModelRepository(repository).entry(args.model)
    cfg = entry.config
    base = Settings(repository=repository, max_batch_size=8, native_size=True, trt_cache_dir=cache_dir,
                    allow_untrained=True, instances=1, solo_instance=False)
    files = sorted(args.data.glob("*.png"))[: args.frames]
    if not files:
        raise SystemExit(f"no PNG frames in {args.data} (CamVid val); use --data")
    from PIL import Image

    raw = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    frames = [resize_image(f, cfg.input.height, cfg.input.width) for f in raw]
    results: dict[str, Any] = {"model": args.model, "mode": "cpu" if cpu_mode else "gpu",
                               "cpu_mode_reason": why if cpu_mode else None, "environment": env,
                               "frames": len(frames), "input": [cfg.input.height, cfg.input.width]}

    print("plans:", flush=True)
    with tempfile.TemporaryDirectory(prefix="enet-gpu-") as tmp:
        x = np.stack(frames[:1])
        reference = build_plan(*REFERENCE, entry, base, Path(tmp), x, ort, runtime_mod)
        if not reference["ok"]:
            raise SystemExit(f"the CPU FP32 reference failed: {reference['error']}")
        ref_masks = masks(reference["_runtime"], frames)
        plans = []
        for label, device, precision, needed in (CPU_PLANS if cpu_mode else GPU_PLANS):
            row = build_plan(label, device, precision, entry, base, Path(tmp), x, ort, runtime_mod)
            row["mask_agreement_needed"] = needed
            if row["ok"]:
                got = masks(row["_runtime"], frames)
                row["mask_agreement"] = float(np.mean(got == ref_masks))
                row["mask_ok"] = row["mask_agreement"] >= needed
                print(f"    masks vs CPU FP32 on {len(frames)} frames: {100 * row['mask_agreement']:.3f} % equal "
                      f"(needed {100 * needed:.1f} %): {'ok' if row['mask_ok'] else 'FAIL'}", flush=True)
            plans.append(row)
        results.update(reference=reference, plans=plans, ok=all(plan_ok(p, env) for p in plans))
        save(args.out, results, started)  # the plans and their masks, should the latency runs be cut short

        print("latency (median ms per batch):", flush=True)
        sizes = parse_sizes(args.sizes)
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        for row in [reference] + plans:
            if not row["ok"]:
                continue
            row["latency"] = []
            for label, h, w in sizes:
                for b in batches:
                    r = latency(row["_runtime"], h, w, b, args.seconds)
                    row["latency"].append({"size": label, "height": h, "width": w, "batch": b, **r})
                    print(f"  {row['plan']:20s} {label:>9s} batch {b}: {r['median_ms']:8.2f} ms "
                          f"({r['images_per_s']:.1f} img/s)", flush=True)
        for row in [reference] + plans:
            row.pop("_runtime", None)
    save(args.out, results, started)  # the latency rows too, should the service's runs be cut short

    if not args.skip_service:
        print("service:", flush=True)
        jpegs = [_jpeg(f) for f in raw]
        results["service"] = service_rows(args, repository, jpegs, cpu_mode, cache_dir)
    save(args.out, results, started)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'} in {results['elapsed_s']:.0f} s; "
          f"{'all plans built and agree' if results['ok'] else 'SOME PLANS FAILED OR DISAGREE'}")
    return 0 if results["ok"] else 1


def plan_ok(row: dict[str, Any], env: dict[str, Any]) -> bool:
    """A plan built and agrees with CPU FP32; a TensorRT plan without TensorRT's libraries is expected to
    fail (the service falls back to CUDA) and counts as skipped, not as a failure."""
    if row["device"] == "tensorrt" and not row["ok"] and not env["tensorrt_libraries"]:
        row["skipped"] = "no TensorRT libraries installed"
        return True
    return bool(row["ok"] and row.get("mask_ok"))


def save(out: Path, results: dict[str, Any], started: float) -> None:
    results["elapsed_s"] = time.perf_counter() - started
    clean = {**results, "plans": [{k: v for k, v in p.items() if k != "_runtime"} for p in results.get("plans", [])]}
    if "reference" in results:
        clean["reference"] = {k: v for k, v in results["reference"].items() if k != "_runtime"}
    (out / "gpu.json").write_text(json.dumps(clean, indent=1, default=str))
    (out / "gpu.md").write_text(markdown(clean))


def _jpeg(frame: np.ndarray) -> bytes:
    from enet_serve.bench.load import to_jpeg

    return to_jpeg(frame, 90)


def markdown(r: dict) -> str:
    env, gpu = r["environment"], r["environment"]["gpu"]
    title = gpu["name"] if gpu and r["mode"] == "gpu" else f"CPU mode ({r['cpu_mode_reason']}): no GPU rows"
    lines = [f"### GPU check: {title}", ""]
    if gpu:
        lines.append(f"GPU {gpu['name']} ({gpu['memory']}, compute capability {gpu['compute_capability']}), driver "
                     f"{gpu['driver']} (CUDA {gpu['driver_cuda']}).")
    lines += [f"onnxruntime {env['onnxruntime']} ({', '.join(env['onnxruntime_distributions']) or '?'}), providers "
              f"{', '.join(env['available_providers'])}; CUDA/cuDNN wheels: "
              f"{', '.join(f'{k} {v}' for k, v in env['cuda_libraries'].items()) or 'none'}; TensorRT: "
              f"{', '.join(f'{k} {v}' for k, v in env['tensorrt_libraries'].items()) or 'none'}; provider libraries "
              f"link {', '.join(f'{k}.so.{v}' for k, v in env['provider_links'].items()) or 'n/a'}.",
              f"Model {r['model']}, {r['frames']} CamVid val frames at {r['input'][0]}x{r['input'][1]}; "
              f"{r['elapsed_s']:.0f} s in all.", "",
              "| plan | created in | providers | nodes not on the GPU | masks = CPU FP32 |",
              "|---|---|---|---|---|"]
    for p in [r["reference"]] + r["plans"]:
        if not p["ok"]:
            state = f"skipped ({p['skipped']})" if p.get("skipped") else "failed"
            lines.append(f"| {p['plan']} | {state} | {p['error'][:160]} | | |")
            continue
        off = p.get("nodes_not_on_gpu")
        agree = p.get("mask_agreement")
        needed = p.get("mask_agreement_needed", 0.0)
        masks_cell = "reference" if agree is None else f"{100 * agree:.3f} % (>= {100 * needed:.1f} %)"
        lines.append(f"| {p['plan']} | {p['create_s']:.1f} s | {', '.join(p['providers'])} | "
                     f"{'n/a' if off is None else len(off)} | {masks_cell} |")
    rows = [p for p in [r["reference"]] + r["plans"] if p["ok"] and p.get("latency")]
    if rows:
        keys = [(x["size"], x["batch"]) for x in rows[0]["latency"]]
        lines += ["", "Latency, median ms per batch (session run with its copies):", "",
                  "| plan | " + " | ".join(f"{s} b{b}" for s, b in keys) + " |", "|---|" + "---|" * len(keys)]
        for p in rows:
            cells = {(x["size"], x["batch"]): x["median_ms"] for x in p["latency"]}
            lines.append(f"| {p['plan']} | " + " | ".join(f"{cells.get(k, float('nan')):.2f}" for k in keys) + " |")
    if r.get("service"):
        s0 = r["service"][0]
        lines += ["", f"The service ({s0.get('provider')}, {s0.get('precision')}, native size, PNG masks):", "",
                  "| clients | median ms | p99 ms | images/s | errors |", "|---|---|---|---|---|"]
        for s in r["service"]:
            lines.append(f"| {s['clients']} | {s['median_ms']:.1f} | {s['p99_ms']:.1f} | {s['images_per_s']:.1f} | "
                         f"{sum(s['errors'].values()) if s['errors'] else 0} |")
    return "\n".join(lines) + "\n"
