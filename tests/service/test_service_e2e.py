"""End to end: real exported models (random-init ENet and LeNet-5) on CamVid and Fashion-MNIST,
in-process and in a real uvicorn process on a free port."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from svc_helpers import (FASHION_LABELS, REPO_ROOT, camvid_jpegs, camvid_val_pngs, fashion_images, stop_process,
                         to_jpeg, to_png)


def _session(repo: Path, name: str) -> ort.InferenceSession:
    import json

    cfg = json.loads((repo / name / "config.json").read_text())
    path = repo / name / cfg["files"]["fp32"]["path"]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _batch_histogram(text: str, model: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("enet_serve_batch_size_bucket{") and f'model="{model}"' in line:
            out[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.fixture
async def real(serve, real_repo):
    return await serve(repository=real_repo, allow_untrained=True, max_batch_size=4, max_delay_ms=10)


async def test_camvid_segment_all_formats(real, camvid_dir):
    jpeg = camvid_jpegs(1)[0]
    small = to_jpeg(Image.open(io.BytesIO(jpeg)).resize((400, 300)))  # another size: resized in and back
    for data, (w, h) in ((jpeg, (480, 360)), (small, (400, 300))):
        r = await real.post("/segment", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["width"], body["height"]) == (w, h)
        mask = Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))
        assert mask.size == (w, h) and mask.mode == "P"
        assert np.asarray(mask).max() < len(body["classes"])
        r = await real.post("/segment?format=png", content=data)
        png = Image.open(io.BytesIO(r.content))
        assert r.headers["content-type"] == "image/png" and png.size == (w, h)
        assert np.array_equal(np.asarray(png), np.asarray(mask))
        r = await real.post("/segment?format=overlay", files={"image": ("frame.jpg", data, "image/jpeg")})
        assert r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == (w, h)


async def test_camvid_masks_match_the_model_alone(real, real_repo, camvid_dir):
    """Concurrent distinct frames at the native size: each mask is exactly what the graph gives that frame alone."""
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in camvid_val_pngs(8)]
    responses = await asyncio.gather(*(real.post("/segment?format=png", content=to_png(f)) for f in frames))
    sess = _session(real_repo, "enet-camvid")
    for f, r in zip(frames, responses):
        assert r.status_code == 200
        alone = sess.run(None, {"image": f[None]})[0][0]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), alone)


async def test_fashion_classify(real, fashion_dir):
    images, _ = fashion_images(4)
    for img in images:
        r = await real.post("/classify", content=to_png(img), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == 5 and all(p["label"] in FASHION_LABELS for p in preds)
        assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
        assert FASHION_LABELS[preds[0]["index"]] == preds[0]["label"]
    r = await real.post("/classify?top_k=10", content=to_png(images[0]))
    assert abs(sum(p["score"] for p in r.json()["predictions"]) - 1) < 1e-4


async def test_64_concurrent_classify_no_cross_talk(real, real_repo, fashion_dir):
    """64 concurrent requests with distinct images: each gets exactly what its image gets alone."""
    import json

    from enet_serve.service.codecs import resize_image

    cfg = json.loads((real_repo / "lenet5-fashion" / "config.json").read_text())
    h, w = cfg["input"]["height"], cfg["input"]["width"]
    images, _ = fashion_images(64)
    responses = await asyncio.gather(*(real.post("/classify?top_k=10", content=to_png(im)) for im in images))
    sess = _session(real_repo, "lenet5-fashion")
    for i, (im, r) in enumerate(zip(images, responses)):
        assert r.status_code == 200
        x = resize_image(im[:, :, None], h, w)  # what the service feeds the model
        alone = sess.run(None, {"image": x[None]})[0][0]
        got = np.zeros(10, np.float32)
        for p in r.json()["predictions"]:
            got[p["index"]] = p["score"]
        assert np.allclose(got, alone, atol=1e-6), i
    counts = _batch_histogram((await real.get("/metrics")).text, "lenet5-fashion")
    assert counts["1.0"] < counts["+Inf"], f"no batch larger than 1: {counts}"


async def test_trained_lenet5_is_accurate(serve, fashion_dir):
    """The shipped classifier, served, labels Fashion-MNIST test images correctly (91% on the whole set)."""
    c = await serve(repository=REPO_ROOT / "model_repository", models=["lenet5-fashion"], max_batch_size=8,
                    max_queue=256)
    images, labels = fashion_images(200)
    responses = await asyncio.gather(*(c.post("/classify?top_k=1", content=to_png(im)) for im in images))
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    correct = sum(r.json()["predictions"][0]["index"] == int(y) for r, y in zip(responses, labels))
    assert correct / len(labels) >= 0.85


async def test_shipped_int8_graphs_serve_and_say_so(serve, fashion_dir):
    """precision=int8 serves the quantized files of config.json, and GET /models (which the demo page reads)
    says so."""
    c = await serve(repository=REPO_ROOT / "model_repository", models=["enet-camvid", "lenet5-fashion"],
                    precision="int8", max_batch_size=2)
    r = await c.get("/models")
    assert r.status_code == 200, r.text
    served = {m["name"]: (m["precision"], m["file"]) for m in r.json()["models"]}
    assert served == {"enet-camvid": ("int8", "1/model.int8.onnx"), "lenet5-fashion": ("int8", "1/model.int8.onnx")}
    images, labels = fashion_images(20)
    responses = await asyncio.gather(*(c.post("/classify?top_k=1", content=to_png(im)) for im in images))
    correct = sum(r.json()["predictions"][0]["index"] == int(y) for r, y in zip(responses, labels))
    assert correct >= 16, correct
    frame = camvid_jpegs(1)[0]
    r = await c.post("/segment?format=json", content=frame)
    assert r.status_code == 200 and r.headers["X-Model"] == "enet-camvid", r.text
    fractions = r.json()["class_fractions"]
    assert fractions["Road"] > 0.1 and fractions["Sky"] > 0.02, fractions  # a street frame, segmented as one


# -- a real server process ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _bench_client_posts(base: str, data: bytes, headers: dict, n: int) -> list[tuple[int, bytes]]:
    from enet_serve.bench.load import Connection

    conn = Connection(base, headers)
    request = conn.request("/segment?format=png", data, "image/jpeg")
    try:
        return [await conn.send(request) for _ in range(n)]
    finally:
        await conn.close()


def test_uvicorn_process(real_repo, tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENET_SERVE_")}
    env["ENET_SERVE_API_KEYS"] = "k1"  # an env setting, next to flags
    cmd = [sys.executable, "-m", "enet_serve.service", "--host", "127.0.0.1", "--port", str(port), "--repository",
           str(real_repo), "--allow-untrained", "--max-batch-size", "2", "--log-level", "info", "--no-access-log"]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    if c.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server not ready in 90 s"
                time.sleep(0.2)
            assert c.get("/health/live").json()["status"] == "live"
            if (Path(real_repo) / "enet-camvid").is_dir() and camvid_val_pngs(1):
                data = camvid_jpegs(1)[0]
                size = (480, 360)
            else:
                data, size = to_jpeg(np.zeros((90, 120, 3), np.uint8)), (120, 90)
            assert c.post("/segment?format=png", content=data).status_code == 401
            r = c.post("/segment?format=png", content=data, headers={"X-API-Key": "k1"})
            assert r.status_code == 200, r.text
            assert Image.open(io.BytesIO(r.content)).size == size
            # the load benchmark's own HTTP client (bench/load.py): keep-alive requests, the same answers
            for status, body in asyncio.run(_bench_client_posts(base, data, {"X-API-Key": "k1"}, 3)):
                assert status == 200 and body == r.content
            models = c.get("/models", headers={"Authorization": "Bearer k1"}).json()["models"]
            assert {m["name"] for m in models} >= {"enet-camvid", "lenet5-fashion"}
            assert all(m["provider"] == "CPUExecutionProvider" for m in models)
            assert 'route="/segment",status="200"' in c.get("/metrics").text
    finally:
        stop_process(proc)
        log.close()
    text = (tmp_path / "server.log").read_text()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "Application shutdown complete" in text and "Traceback" not in text, text


def test_process_refuses_untrained_model(tiny_repo, tmp_path):
    from svc_helpers import copy_model, edit_config

    repo = tmp_path / "repo"
    edit_config(copy_model(tiny_repo, "lenet5-fashion", repo), weights__trained=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENET_SERVE_")}
    r = subprocess.run([sys.executable, "-m", "enet_serve.service", "--host", "127.0.0.1", "--port", str(_free_port()),
                        "--repository", str(repo)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "trained: false" in r.stdout + r.stderr
