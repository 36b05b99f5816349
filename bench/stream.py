"""The segmentation answers' cost per frame, and the video stream's overhead over POST /segment.

    enet-serve bench stream                       # both parts, the shipped ENet on CamVid val frames
    enet-serve bench stream --part answers        # in-process only: each option's encode time per frame
    enet-serve bench stream --part stream --frames 200

1. answers (in-process): ENet's masks of real CamVid frames (360x480), each format and option encoded by
   the service's SegmentTask as a request would be (median ms per frame); and the labelling of regions
   by OpenCV (its default algorithm and Grana's BBDT, one thread) and SciPy's ndimage (when installed).
   A model without a confidence output gets a synthetic confidence map for the confidence rows.
2. stream: the service started on a loopback port (as `bench load` does); one client sends a frame and
   waits for its answer, over the WebSocket and as keep-alive POSTs, alternating frame by frame so
   both see the same machine; median round trip per frame, the stream's over POST's, and the server's
   own `latency_ms` of the stream.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from enet_serve.bench.load import Connection, load_frames, model_file, start_service, to_jpeg
from enet_serve.paths import DEFAULT_CAMVID, DEFAULT_REPOSITORY


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--part", choices=["answers", "stream", "both"], default="both")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository")
    p.add_argument("--model", default="enet-camvid", help="segmentation model")
    p.add_argument("--data", type=Path, default=DEFAULT_CAMVID / "val", help="directory of CamVid val PNGs")
    p.add_argument("--images", type=int, default=16, help="distinct frames")
    p.add_argument("--repeats", type=int, default=10, help="answers: passes over the frames per option")
    p.add_argument("--frames", type=int, default=120, help="stream: frames per transport (sent one at a time)")
    p.add_argument("--warmup", type=int, default=20, help="stream: untimed frames per transport first")
    p.add_argument("--format", default="png", choices=["png", "json", "rle"], help="stream: the answer format")
    p.add_argument("--allow-untrained", action="store_true", help="start the service with --allow-untrained")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra flag for the started service (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")


# -- 1. the answers, in-process ---------------------------------------------------------------------------

ANSWER_ROWS = [  # (row, format, options beyond the format)
    ("png (the mask PNG, for reference)", "png", {}),
    ("json", "json", {}),
    ("rle", "rle", {}),
    ("json + regions=true", "json", {"regions": True}),
    ("rle + regions=true", "rle", {"regions": True}),
    ("json + classes=Road,Car", "json", {"classes": "Road,Car"}),
    ("png + min_confidence=0.5", "png", {"min_confidence": 0.5}),
    ("confidence (grey PNG)", "confidence", {}),
]


def measure_answers(args, frames: list[np.ndarray]) -> dict:
    import onnxruntime as ort

    from enet_serve.service import segment_answers
    from enet_serve.service.settings import Settings
    from enet_serve.service.tasks import SegmentOptions, handler_for

    path, cfg = model_file(args.repository, args.model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    task = handler_for(args.model, cfg, Settings())
    synthetic = task.confidence_output is None
    if synthetic:  # answer as a model with the output would: the options run over a plausible map
        task.confidence_output = "confidence"
    work = []
    for frame in frames:
        x = frame if cfg.input.accepts(frame.shape) else None
        if x is None:
            from enet_serve.service.codecs import resize_image
            x = resize_image(frame, cfg.input.height, cfg.input.width)
        outputs = dict(zip(names, (o[0] for o in session.run(None, {cfg.input.name: x[None]}))))
        if synthetic:
            rng = np.random.default_rng(len(work))
            outputs["confidence"] = np.clip(rng.normal(215, 30, outputs["mask"].shape), 0, 255).astype(np.uint8)
        prepared = task.prepare(to_jpeg(frame, 90))
        work.append((prepared, outputs))
    rows = {}
    for row, fmt, extra in ANSWER_ROWS:
        classes = extra.get("classes")
        options = SegmentOptions(format=fmt, min_confidence=extra.get("min_confidence"),
                                 classes=task.class_indices(classes) if classes else None,
                                 regions=extra.get("regions", False))
        times = []
        for _ in range(args.repeats):
            for prepared, outputs in work:
                t0 = time.perf_counter()
                task.encode(prepared, outputs, options)
                times.append(time.perf_counter() - t0)
        rows[row] = statistics.median(times) * 1000
    masks = [outputs["mask"] for _, outputs in work]
    labelling = {}
    import cv2

    def opencv(algorithm):
        def label(mask):
            for c in np.unique(mask):
                cv2.connectedComponentsWithStatsWithAlgorithm((mask == c).view(np.uint8), 8, cv2.CV_32S, algorithm)
        return label

    def rle_all(mask):
        segment_answers.coco_rle(mask, range(len(task.class_names)))

    candidates = {"OpenCV connectedComponentsWithStats, default algorithm": opencv(cv2.CCL_DEFAULT),
                  "OpenCV connectedComponentsWithStats, Grana BBDT (served)": opencv(cv2.CCL_GRANA),
                  "COCO RLE of every class (served)": rle_all}
    try:
        from scipy import ndimage

        structure = np.ones((3, 3), bool)
        min_area = segment_answers.default_min_area(*masks[0].shape)

        def scipy_label(mask):  # its cheapest route to the same answer: centroids of the kept regions only
            for c in np.unique(mask):
                labels, _ = ndimage.label(mask == c, structure=structure)
                boxes = ndimage.find_objects(labels)
                areas = np.bincount(labels.ravel())
                for i in np.flatnonzero(areas[1:] >= min_area) + 1:
                    ys, xs = np.nonzero(labels[boxes[i - 1]] == i)
                    xs.mean(), ys.mean()

        candidates["SciPy ndimage.label + find_objects + bincount (+ centroids of the kept regions)"] = scipy_label
    except ImportError:
        print("scipy is not installed: its row is left out", flush=True)
    try:
        from pycocotools import mask as coco_mask

        def pycocotools_rle(mask):
            present = np.unique(mask)
            coco_mask.encode(np.asfortranarray(np.stack([mask == c for c in present], axis=-1).astype(np.uint8)))

        candidates["pycocotools.mask.encode of every class (for comparison)"] = pycocotools_rle
    except ImportError:
        pass
    for threads in (1, 2):
        cv2.setNumThreads(threads)
        for name, fn in candidates.items():
            if threads == 2 and not name.startswith("OpenCV"):
                continue
            times = []
            for _ in range(args.repeats):
                for mask in masks:
                    t0 = time.perf_counter()
                    fn(mask)
                    times.append(time.perf_counter() - t0)
            labelling[f"{name}, {threads} OpenCV thread(s)" if name.startswith("OpenCV") else name] = \
                statistics.median(times) * 1000
    cv2.setNumThreads(1)
    return {"encode_ms": rows, "labelling_ms": labelling, "synthetic_confidence": synthetic,
            "size": list(masks[0].shape)}


# -- 2. the stream against POST -----------------------------------------------------------------------------

async def measure_stream(url: str, bodies: list[bytes], args) -> dict:
    from websockets.asyncio.client import connect

    ws_url = url.replace("http://", "ws://") + f"/segment/stream?format={args.format}"
    binary = args.format == "png"
    post = Connection(url, {})
    requests = [post.request(f"/segment?format={args.format}", b, "image/jpeg") for b in bodies]
    times: dict[str, list[float]] = {"stream": [], "post": []}
    server_ms: list[float] = []
    async with connect(ws_url, max_size=None) as ws:
        for i in range(args.warmup):  # warm both paths (threads, connections)
            await ws.send(bodies[i % len(bodies)])
            await ws.recv()
            if binary:
                await ws.recv()
            await post.send(requests[i % len(requests)])
        for sent in range(args.frames):  # one frame each way in turn: both see the machine as it is then
            t0 = time.perf_counter()
            await ws.send(bodies[sent % len(bodies)])
            message = json.loads(await ws.recv())
            if binary:
                await ws.recv()
            times["stream"].append(time.perf_counter() - t0)
            server_ms.append(message["latency_ms"])
            assert not message["dropped"] and "error" not in message, message
            t0 = time.perf_counter()
            status, _ = await post.send(requests[sent % len(requests)])
            times["post"].append(time.perf_counter() - t0)
            assert status == 200, status
    await post.close()
    stream, posted = statistics.median(times["stream"]) * 1000, statistics.median(times["post"]) * 1000
    return {"frames": len(times["stream"]), "format": args.format, "stream_ms": stream, "post_ms": posted,
            "ratio": stream / posted, "stream_server_latency_ms": statistics.median(server_ms)}


def run(args: argparse.Namespace) -> int:
    frames = load_frames(args.data, args.images)
    results: dict = {}
    if args.part in ("answers", "both"):
        results["answers"] = measure_answers(args, frames)
        a = results["answers"]
        print(f"\nper {a['size'][0]}x{a['size'][1]} frame, median ms (synthetic confidence: {a['synthetic_confidence']})")
        for name, ms in {**a["encode_ms"], **a["labelling_ms"]}.items():
            print(f"  {name:70s} {ms:7.2f}")
    if args.part in ("stream", "both"):
        bodies = [to_jpeg(f, 90) for f in frames]
        proc, url = start_service(args)
        try:
            results["stream"] = asyncio.run(measure_stream(url, bodies, args))
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        s = results["stream"]
        print(f"\none client, one frame at a time, {s['frames']} frames each, format={s['format']}: "
              f"stream {s['stream_ms']:.2f} ms, POST {s['post_ms']:.2f} ms per frame (stream / POST = "
              f"{s['ratio']:.3f}); the stream's server latency_ms {s['stream_server_latency_ms']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from enet_serve.bench import run_as_script

    run_as_script(__name__)
