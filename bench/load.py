"""Load benchmark of the service against the in-process limit of the same ONNX file.

    python -m enet_serve.bench.load                                  # ENet, CamVid val JPEGs, 1 and 16 clients
    python -m enet_serve.bench.load --clients 1,4,16 --duration 30
    python -m enet_serve.bench.load --url http://host:8000 --skip-limit
    python -m enet_serve.bench.load --codecs                         # decoder and PNG-level measurements only

1. The limit: the model's ONNX file in this process with the service's session options (and with
   onnxruntime's defaults; the better counts), batch sizes 1..8 on real frames: images/s per batch
   size, the best being "the limit"; plus the median decode (JPEG) and encode (mask PNG) times.
2. The service: started with uvicorn on a free loopback port (`python -m enet_serve.service`, its own process;
   or `--url` to target one that runs), driven by N concurrent keep-alive connections (a small
   asyncio HTTP/1.1 client, see `Connection`) that POST CamVid val JPEGs to /segment?format=png for
   a bounded time (after a warm-up period).
3. A table: median / p99 latency and throughput per row, throughput as a fraction of the limit,
   and for 1 client the median against batch-1 inference + decode + encode.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from enet_serve.bench.onnx_runtime import measure, percentile
from enet_serve.model_config import ModelConfig, ModelConfigError, load_config
from enet_serve.paths import DEFAULT_CAMVID, DEFAULT_REPOSITORY, REPO_ROOT

DEFAULT_DATA = DEFAULT_CAMVID / "val"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="benchmark a running service at this base URL instead of starting one")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository")
    p.add_argument("--model", default="enet-camvid", help="segmentation model to drive")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory of CamVid val PNGs")
    p.add_argument("--images", type=int, default=32, help="distinct frames to cycle through")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the request bodies")
    p.add_argument("--format", default="png", choices=["png", "json", "overlay"], help="/segment format")
    p.add_argument("--clients", default="1,16", help="comma-separated concurrent client counts")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per client count")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each measurement")
    p.add_argument("--limit-batches", default="1,2,4,8", help="batch sizes of the in-process limit")
    p.add_argument("--limit-seconds", type=float, default=3.0, help="seconds per in-process batch size")
    p.add_argument("--skip-limit", action="store_true", help="do not measure the in-process limit")
    p.add_argument("--allow-untrained", action="store_true", help="start the service with --allow-untrained")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra flag for the started service, e.g. --server-arg=--max-delay-ms=2 (repeatable)")
    p.add_argument("--codecs", action="store_true", help="only measure decoders and PNG levels")
    p.add_argument("--json", type=Path, help="also write the results here")


# -- data --------------------------------------------------------------------------------------------------

def load_frames(data: Path, n: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(data.glob("*.png"))[:n]
    if not files:
        raise SystemExit(f"no PNG frames in {data} (CamVid val); use --data")
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def to_jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# -- in-process limit -------------------------------------------------------------------------------------

def model_file(repository: Path, model: str) -> tuple[Path, ModelConfig]:
    try:
        cfg = load_config(repository / model)
    except ModelConfigError as e:
        raise SystemExit(str(e)) from None
    spec = cfg.files.get("fp32") or next(iter(cfg.files.values()))
    return repository / model / spec.path, cfg


def measure_limit(path: Path, frames: list[np.ndarray], batches: list[int], seconds: float) -> dict:
    import onnxruntime as ort

    from enet_serve.service.runtime import session_options
    from enet_serve.service.settings import Settings, cpu_count

    variants = {}
    service_opts = session_options(Settings(), cpu_count())
    default_opts = ort.SessionOptions()
    default_opts.intra_op_num_threads = cpu_count()
    for label, opts in (("service options", service_opts), ("onnxruntime defaults", default_opts)):
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        rows = {}
        for b in batches:
            x = np.stack([frames[i % len(frames)] for i in range(b)])
            times = measure(sess, {name: x}, warmup=1, runs=2, min_seconds=seconds)
            med = statistics.median(times)
            rows[b] = {"median_ms": med * 1e3, "p99_ms": percentile(times, 99) * 1e3, "images_per_s": b / med}
            print(f"  limit [{label}] batch {b}: {med * 1e3:8.1f} ms/batch  {b / med:7.2f} img/s", flush=True)
        variants[label] = rows
        del sess
    best_label, best_b = max(((lbl, b) for lbl, rows in variants.items() for b in rows),
                             key=lambda k: variants[k[0]][k[1]]["images_per_s"])
    return {"variants": variants, "best": {"options": best_label, "batch": best_b,
                                           **variants[best_label][best_b]},
            "batch1_ms": variants["service options"][1]["median_ms"] if 1 in variants["service options"] else None}


def measure_codecs(jpegs: list[bytes], masks: list[np.ndarray], palette: bytes, repeats: int = 5) -> dict:
    """Median decode (service path, Pillow for comparison) and mask PNG encode at several levels."""
    from PIL import Image

    from enet_serve.service import codecs

    def timed(fn, items):
        out = []
        for _ in range(repeats):
            for it in items:
                t0 = time.perf_counter()
                fn(it)
                out.append(time.perf_counter() - t0)
        return statistics.median(out) * 1e3

    res = {
        "decode_service_ms": timed(lambda d: codecs.decode_image(d), jpegs),
        "decode_pillow_ms": timed(lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB")), jpegs),
        "png": {},
    }
    for level in (0, 1, 3, 6, 9):
        sizes = [len(codecs.encode_mask_png(m, palette, level)) for m in masks]
        res["png"][f"rle level {level}"] = {"ms": timed(lambda m: codecs.encode_mask_png(m, palette, level), masks),
                                            "bytes": float(np.mean(sizes))}
    for level in (1, 6, 9):
        def pil(m, level=level):
            img = Image.fromarray(m, "L").convert("P")
            img.putpalette(palette)
            buf = io.BytesIO()
            img.save(buf, "PNG", compress_level=level)
            return buf.getvalue()
        res["png"][f"pillow level {level}"] = {"ms": timed(pil, masks),
                                               "bytes": float(np.mean([len(pil(m)) for m in masks]))}
    return res


# -- the service ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(args) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "enet_serve.service", "--host", "127.0.0.1", "--port", str(port), "--repository",
           str(args.repository), "--models", args.model, "--no-access-log", "--log-level", "warning",
           "--default-segment-model", args.model]
    if args.allow_untrained:
        cmd.append("--allow-untrained")
    cmd += args.server_arg
    env = dict(os.environ)
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the service was not ready in 300 s")
        time.sleep(0.25)


def stop_service(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM (the service drains), then kill after `grace_s`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the load generator's client.

    It sends prebuilt request bytes and reads the status line, headers and a Content-Length body,
    which costs a fraction of httpx's per-request CPU: on a 2-core machine the load generator shares
    the cores it measures, so what the client spends is taken from the service.
    """

    def __init__(self, url: str, headers: dict[str, str]):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "http":
            raise SystemExit(f"bench load speaks plain HTTP/1.1 only, not {url!r}")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def request(self, path: str, body: bytes, content_type: str) -> bytes:
        head = (f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{self.headers}\r\n")
        return head.encode("latin-1") + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one prebuilt request; (status, body). Reconnects when the server closed the connection."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" not in fields:
            raise RuntimeError(f"response without Content-Length (headers: {fields})")
        body = await self.reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = self.reader = None


async def drive(url: str, bodies: list[bytes], clients: int, duration: float, warmup: float, fmt: str,
                headers: dict[str, str]) -> dict:
    """`clients` connections, each POSTing the next body as soon as its previous answer is in."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    measuring = False
    stop = False
    done_in_window = 0

    async def worker(k: int):
        nonlocal done_in_window
        conn = Connection(url, headers)
        requests = [conn.request(f"/segment?format={fmt}", body, "image/jpeg") for body in bodies]
        i = k
        try:
            while not stop:
                request = requests[i % len(requests)]
                i += clients
                t0 = time.perf_counter()
                status, _ = await conn.send(request)
                dt = time.perf_counter() - t0
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
                elif measuring and not stop:
                    latencies.append(dt)
                    done_in_window += 1
        finally:
            await conn.close()

    tasks = [asyncio.create_task(worker(k)) for k in range(clients)]
    await asyncio.sleep(warmup)
    measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks)
    return {"clients": clients, "requests": done_in_window, "images_per_s": done_in_window / elapsed,
            "median_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3, "errors": errors}


SERVER_SERIES = {  # metric -> short name, for the server-side breakdown of each phase
    "enet_serve_batch_size": "batch",
    "enet_serve_inference_duration_seconds": "inference",
    "enet_serve_queue_wait_seconds": "queue_wait",
    "enet_serve_decode_duration_seconds": "decode",
}


async def scrape(url: str, model: str, headers: dict[str, str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's histograms for `model`, and (solo batches, all batches)."""
    import httpx

    async with httpx.AsyncClient(base_url=url) as c:
        text = (await c.get("/metrics", headers=headers)).text
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        if line.startswith("enet_serve_batches_total{") and f'model="{model}"' in line:
            counts = out.setdefault("solo_share", [0.0, 0.0])
            n = float(line.rsplit(" ", 1)[1])
            counts[0] += n if 'instance="solo"' in line else 0.0
            counts[1] += n
        for metric, short in SERVER_SERIES.items():
            for part, idx in (("_sum", 0), ("_count", 1)):
                if line.startswith(f'{metric}{part}{{model="{model}"}}'):
                    out.setdefault(short, [0.0, 0.0])[idx] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def server_breakdown(before: dict, after: dict) -> dict[str, float]:
    """Means over one phase: batch size, ms of inference per batch, ms of queue wait and decode per request,
    and the share of batches that ran on the solo instance."""
    res = {}
    for key, (s1, c1) in after.items():
        s0, c0 = before.get(key, (0.0, 0.0))
        if c1 > c0:
            mean = (s1 - s0) / (c1 - c0)
            res[key] = mean if key in ("batch", "solo_share") else mean * 1e3
    return res


# -- report --------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    frames = load_frames(args.data, args.images)
    jpegs = [to_jpeg(f, args.quality) for f in frames]
    print(f"{len(jpegs)} CamVid frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
          f"JPEG q{args.quality} mean {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB", flush=True)
    results: dict = {"model": args.model, "format": args.format}
    headers = {}
    if os.environ.get("ENET_SERVE_BENCH_KEY"):
        headers["X-API-Key"] = os.environ["ENET_SERVE_BENCH_KEY"]

    limit = None
    if not args.skip_limit or args.codecs:
        path, cfg = model_file(args.repository, args.model)
        print(f"model file {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
        import onnxruntime as ort

        from enet_serve.service import codecs

        palette = codecs.palette_bytes(cfg.palette())
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        masks = [sess.run(None, {sess.get_inputs()[0].name: f[None]})[0][0] for f in frames[:8]]
        del sess
        results["codecs"] = measure_codecs(jpegs[:8], masks, palette)
        c = results["codecs"]
        print(f"decode: service {c['decode_service_ms']:.2f} ms, Pillow {c['decode_pillow_ms']:.2f} ms; "
              "mask PNG: " + ", ".join(f"{k} {v['ms']:.2f} ms/{v['bytes'] / 1024:.1f} KiB" for k, v in c["png"].items()),
              flush=True)
        if args.codecs:
            _write(args, results)
            return 0
        batches = [int(b) for b in args.limit_batches.split(",")]
        limit = measure_limit(path, frames, batches, args.limit_seconds)
        results["limit"] = limit

    proc = None
    url = args.url
    if url is None:
        proc, url = start_service(args)
    try:
        results["service"] = []
        for n in [int(c) for c in args.clients.split(",")]:
            before = asyncio.run(scrape(url, args.model, headers))
            r = asyncio.run(drive(url, jpegs, n, args.duration, args.warmup, args.format, headers))
            r["server"] = server_breakdown(before, asyncio.run(scrape(url, args.model, headers)))
            results["service"].append(r)
            sv = r["server"]
            print(f"  service {n:3d} clients: median {r['median_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                  f"{r['images_per_s']:7.2f} img/s  errors {r['errors'] or 0}  | server means: "
                  f"batch {sv.get('batch', 0):.2f}, inference {sv.get('inference', 0):.1f} ms/batch, "
                  f"queue wait {sv.get('queue_wait', 0):.1f} ms, decode {sv.get('decode', 0):.2f} ms, "
                  f"solo {100 * sv.get('solo_share', 0):.0f} % of batches", flush=True)
    finally:
        if proc is not None:
            stop_service(proc)

    _table(results)
    _write(args, results)
    return 0


def _table(results: dict) -> None:
    limit = results.get("limit")
    best = limit["best"]["images_per_s"] if limit else None
    print()
    print(f"{'row':44s} {'median ms':>10s} {'p99 ms':>10s} {'img/s':>8s} {'ratio':>7s}")
    if limit:
        for label, rows in limit["variants"].items():
            for b, row in rows.items():
                print(f"{f'in-process batch {b} ({label})':44s} {row['median_ms']:10.1f} {row['p99_ms']:10.1f} "
                      f"{row['images_per_s']:8.2f} {row['images_per_s'] / best:7.2f}")
    for r in results.get("service", []):
        ratio = f"{r['images_per_s'] / best:7.2f}" if best else "      -"
        label = f"service, {r['clients']} clients (mean batch {r['server'].get('batch', 0):.2f})"
        print(f"{label:44s} {r['median_ms']:10.1f} {r['p99_ms']:10.1f} {r['images_per_s']:8.2f} {ratio}")
    if limit and results.get("codecs") and limit.get("batch1_ms"):
        c = results["codecs"]
        png = c["png"].get("rle level 1", {}).get("ms", 0.0)
        ref = limit["batch1_ms"] + c["decode_service_ms"] + png
        print(f"\n1-client reference: batch-1 {limit['batch1_ms']:.1f} + decode {c['decode_service_ms']:.2f} + "
              f"PNG {png:.2f} = {ref:.1f} ms")
        for r in results.get("service", []):
            if r["clients"] == 1:
                print(f"1-client median {r['median_ms']:.1f} ms = {r['median_ms'] / ref:.3f} x reference")
    print(f"limit = best in-process throughput: {best:.2f} img/s "
          f"(batch {limit['best']['batch']}, {limit['best']['options']})" if limit else "")


def _write(args, results: dict) -> None:
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    from enet_serve.bench import run_as_script

    run_as_script(__name__)
