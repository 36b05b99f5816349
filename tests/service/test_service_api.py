"""The real app in-process (lifespan run, httpx.ASGITransport) over the tiny contract graphs."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import threading

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from enet_serve.service import runtime
from svc_helpers import error_of, random_rgb, to_jpeg, to_png

SEG_SIZE = (120, 160)  # the tiny segmentation model's native size


def _error(r, status, code=None):
    assert r.status_code == status, r.text
    error = error_of(r)
    if code:
        assert error["code"] == code, r.text
    return error


def _solo_mask(tiny_repo, rgb: np.ndarray) -> np.ndarray:
    """What the segmentation graph answers for this exact input, alone (batch 1, no server)."""
    s = ort.InferenceSession(str(tiny_repo / "enet-camvid/1/model.fp32.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, {"image": rgb[None]})[0][0]


async def test_segment_three_formats(serve):
    c = await serve()
    rgb = random_rgb(1, 240, 320)  # twice the native size: resized in, mask resized back
    data = to_png(rgb)
    r = await c.post("/segment", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["model"], body["width"], body["height"]) == ("enet-camvid", 320, 240)
    assert body["classes"][0] == "Sky" and body["classes"][11] == "Unlabelled"
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert mask.shape == (240, 320)
    assert abs(sum(body["class_fractions"].values()) - 1) < 1e-3

    r = await c.post("/segment?format=png", content=data)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(r.content))
    assert png.mode == "P" and png.size == (320, 240)
    assert np.array_equal(np.asarray(png), mask)
    assert png.getpalette()[:3] == [128, 128, 128]

    r = await c.post("/segment", content=data, headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png"

    r = await c.post("/segment?format=overlay&alpha=0.3", files={"image": ("x.png", data, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (320, 240)


async def test_segment_native_size_mask_matches_model(serve, tiny_repo):
    c = await serve()
    rgb = random_rgb(2, *SEG_SIZE)
    r = await c.post("/segment?format=png", content=to_png(rgb))
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    assert np.array_equal(got, _solo_mask(tiny_repo, rgb))


async def test_native_size_option_pads_and_crops(serve, tiny_repo):
    c = await serve(native_size=True)
    rgb = random_rgb(3, 100, 130)  # not multiples of 8: padded to 104 x 136, cropped back
    r = await c.post("/segment?format=png", content=to_png(rgb))
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    assert got.shape == (100, 130)
    assert np.array_equal(got, _solo_mask(tiny_repo, rgb))


async def test_no_cross_talk_and_batches_form(serve, tiny_repo):
    c = await serve(max_batch_size=8, max_delay_ms=20)
    images = [random_rgb(100 + i, *SEG_SIZE) for i in range(64)]
    bodies = [to_png(im) for im in images]
    responses = await asyncio.gather(*(c.post("/segment?format=png", content=b) for b in bodies))
    for im, r in zip(images, responses):
        assert r.status_code == 200
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), _solo_mask(tiny_repo, im))
    metrics = (await c.get("/metrics")).text
    counts = _histogram(metrics, "enet_serve_batch_size", "enet-camvid")
    assert counts["1.0"] < counts["+Inf"], f"no batch larger than 1 was formed: {counts}"


def _histogram(text: str, name: str, model: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and f'model="{model}"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


async def test_classify(serve, tiny_repo):
    c = await serve()
    gray = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) % 256).astype(np.uint8)
    r = await c.post("/classify?top_k=3", content=to_png(gray))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "lenet5-fashion" and len(body["predictions"]) == 3
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)
    s = ort.InferenceSession(str(tiny_repo / "lenet5-fashion/1/model.fp32.onnx"), providers=["CPUExecutionProvider"])
    probs = s.run(None, {"image": gray[None, :, :, None]})[0][0]
    assert body["predictions"][0]["index"] == int(probs.argmax())
    assert abs(body["predictions"][0]["score"] - float(probs.max())) < 1e-5
    # an RGB image of another size is converted to gray and resized
    r = await c.post("/classify", content=to_jpeg(random_rgb(5, 64, 64)))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5
    r = await c.post("/classify?top_k=50", content=to_png(gray))
    assert len(r.json()["predictions"]) == 10


async def test_models_routes(serve):
    c = await serve()
    r = await c.get("/models")
    assert r.status_code == 200
    body = r.json()
    assert body["defaults"] == {"segment": "enet-camvid", "classify": "lenet5-fashion"}
    names = [m["name"] for m in body["models"]]
    assert names == ["enet-camvid", "lenet5-fashion"]
    seg = (await c.get("/models/enet-camvid")).json()
    assert seg["provider"] == "CPUExecutionProvider" and seg["precision"] == "fp32" and seg["device"] == "cpu"
    assert seg["task"] == "segment" and seg["input"]["height"] == 120 and seg["batching"]["max_batch_size"] == 4
    assert seg["ready"] is True and seg["labels"][3] == "Road"
    _error(await c.get("/models/nope"), 404, "model_not_found")


async def test_batch_size_tuning(serve):
    c = await serve(max_batch_size=8, tune_batch_size=True)
    batching = (await c.get("/models/enet-camvid")).json()["batching"]
    assert set(batching["measured_images_per_s"]) == {"1", "2", "4", "8"}
    assert 1 <= batching["effective_max_batch_size"] <= 8
    assert c.app.state.server.models["enet-camvid"].batcher.max_batch_size == batching["effective_max_batch_size"]


def test_pick_batch_size():
    assert runtime.pick_batch_size({1: 10.0, 2: 9.0, 4: 8.0}) == 1
    assert runtime.pick_batch_size({1: 10.0, 2: 19.0, 4: 19.5, 8: 19.6}) == 2  # within 10 % of the best
    assert runtime.pick_batch_size({1: 10.0, 2: 15.0, 4: 19.5, 8: 19.6}) == 4
    assert runtime.tuning_candidates(8) == [1, 2, 4, 8] and runtime.tuning_candidates(6) == [1, 2, 4, 6]
    assert runtime.tuning_candidates(1) == [1]


async def test_error_statuses(serve):
    c = await serve(max_body_bytes=50_000, max_image_pixels=200 * 200)
    img = to_png(random_rgb(7, 64, 64))
    _error(await c.post("/segment?model=nope", content=img), 404, "model_not_found")
    _error(await c.post("/segment?model=lenet5-fashion", content=img), 422, "wrong_task")
    _error(await c.post("/segment", content=b"definitely not an image"), 400, "bad_image")
    _error(await c.post("/segment", content=b""), 400, "bad_image")
    _error(await c.post("/segment", content=b"{}", headers={"Content-Type": "application/json"}), 415)
    _error(await c.post("/segment?format=gif", content=img), 422, "invalid_parameter")
    _error(await c.post("/classify?top_k=0", content=img), 422, "invalid_parameter")
    _error(await c.post("/segment", content=b"x" * 50_001), 413, "payload_too_large")
    _error(await c.post("/segment", content=to_png(np.zeros((300, 300, 3), np.uint8))), 413, "payload_too_large")
    _error(await c.post("/segment", files={"other": ("x.png", img, "image/png")}), 422, "missing_image")
    _error(await c.get("/no/such/route"), 404, "not_found")
    _error(await c.delete("/segment"), 405, "method_not_allowed")
    _error(await c.get("/segment"), 405)


def _utf8_bmp() -> bytes:
    """A 2x1 BMP whose bytes are all valid UTF-8, with two-byte sequences in its pixels (C3 A9 = 'é')."""
    buf = io.BytesIO()
    Image.fromarray(np.array([[[0x41, 0xA9, 0xC3], [0x41, 0x41, 0x41]]], np.uint8)).save(buf, "BMP")
    data = bytearray(buf.getvalue())
    data[38:46] = bytes(8)  # the resolution fields (not needed; not UTF-8)
    data = bytes(data)
    assert data.decode("utf-8") and b"\xc3\xa9" in data
    return data


async def test_multipart_image_as_a_file_part_or_a_plain_field(serve):
    """`curl -F image=@x.bmp` (a file part) and `curl -F 'image=<x.bmp'` (a plain field, no filename) both
    give the image's bytes as sent: a plain field used to go through Starlette's text decoding."""
    c = await serve()
    for data in (_utf8_bmp(), to_png(random_rgb(8, 30, 40))):
        raw = await c.post("/segment?format=png", content=data)
        assert raw.status_code == 200, raw.text
        for files in ({"image": ("x.img", data, "application/octet-stream")},  # file part
                      {"image": (None, data)},  # plain field: no filename
                      {"other": (None, b"x"), "image": (None, data), "note": ("n.txt", b"hello", "text/plain")}):
            r = await c.post("/segment?format=png", files=files)
            assert r.status_code == 200 and r.content == raw.content, (list(files), r.text)
    img = to_png(random_rgb(9, 30, 40))
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'.encode()
    for body in (head + img, head + img + f"\r\n--{boundary}--\r\n".encode()[:-8]):  # no closing boundary
        _error(await c.post("/segment", content=body,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}), 400)
    _error(await c.post("/segment", content=head, headers={"Content-Type": "multipart/form-data"}), 400)
    whole = head + img + f"\r\n--{boundary}--\r\n".encode()
    r = await c.post("/segment", content=whole, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text


async def test_chunked_body_over_the_limit(serve):
    c = await serve(max_body_bytes=10_000)

    async def chunks():
        for _ in range(20):
            yield b"x" * 1000

    _error(await c.post("/segment", content=chunks()), 413)


async def test_api_keys(serve):
    c = await serve(api_keys=["s3cret", "other"])
    img = to_png(random_rgb(8, 32, 32))
    e = _error(await c.post("/segment", content=img), 401, "unauthorized")
    assert "missing" in e["message"]
    _error(await c.post("/segment", content=img, headers={"Authorization": "Bearer nope"}), 401)
    _error(await c.get("/models"), 401)
    assert (await c.post("/segment", content=img, headers={"Authorization": "Bearer s3cret"})).status_code == 200
    assert (await c.post("/classify", content=img, headers={"X-API-Key": "other"})).status_code == 200
    assert (await c.get("/models", headers={"X-API-Key": "s3cret"})).status_code == 200
    for path in ("/health/live", "/health/ready", "/metrics", "/v2/health/ready"):
        assert (await c.get(path)).status_code == 200, path
    _error(await c.get("/v2/models/enet-camvid"), 401)


async def test_dependency_overrides_swap_settings_and_server(serve):
    from enet_serve.service.api.deps import get_server, get_settings
    from enet_serve.service.metrics import Metrics
    from enet_serve.service.server import ModelServer
    from enet_serve.service.settings import Settings

    c = await serve()
    app = c.app
    assert (await c.get("/models")).status_code == 200
    app.dependency_overrides[get_settings] = lambda: Settings(api_keys=["k"])
    _error(await c.get("/models"), 401, "unauthorized")
    assert (await c.get("/models", headers={"X-API-Key": "k"})).status_code == 200
    app.dependency_overrides.clear()

    idle = ModelServer(Settings(), Metrics())  # loaded nothing: not ready, no models
    app.dependency_overrides[get_server] = lambda: idle
    _error(await c.get("/health/ready"), 503, "not_ready")
    _error(await c.get("/v2/health/ready"), 503, "not_ready")
    assert (await c.get("/models")).json()["models"] == []
    _error(await c.post("/segment", content=to_png(random_rgb(1, 32, 32))), 404, "model_not_found")
    app.dependency_overrides.clear()
    assert (await c.get("/health/ready")).status_code == 200


async def test_metrics_names(serve):
    c = await serve()
    await c.post("/segment", content=to_png(random_rgb(9, 32, 32)))
    await c.post("/segment?model=nope", content=b"x")
    r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("enet_serve_requests_total", "enet_serve_request_duration_seconds_bucket",
                 "enet_serve_queue_wait_seconds_bucket", "enet_serve_inference_duration_seconds_bucket",
                 "enet_serve_batch_size_bucket", "enet_serve_queue_depth", "enet_serve_model_ready",
                 "enet_serve_decode_duration_seconds_bucket", "process_cpu_seconds_total"):
        assert name in text, name
    assert 'enet_serve_requests_total{model="enet-camvid",route="/segment",status="200"} 1.0' in text
    assert 'enet_serve_requests_total{model="",route="/segment",status="404"} 1.0' in text
    assert 'enet_serve_model_ready{model="enet-camvid"} 1.0' in text
    assert "_created" not in text  # prometheus-client's creation-time series are off
    # a lone request runs on the solo instance (every core) when the CPU has room for two instances
    from enet_serve.service.settings import cpu_count

    instance = "solo" if cpu_count() >= 2 else "0"
    batches = [line for line in text.splitlines() if line.startswith("enet_serve_batches_total{")]
    assert len(batches) == 1 and 'model="enet-camvid"' in batches[0] and f'instance="{instance}"' in batches[0]
    assert batches[0].endswith(" 1.0"), batches
    # each app has its own registry: a second app starts from zero
    c2 = await serve()
    assert 'route="/segment",status="200"' not in (await c2.get("/metrics")).text


async def test_readiness_503_until_warm(serve, monkeypatch):
    gate = threading.Event()
    real_warm = runtime.ModelRuntime.warm

    def slow_warm(self, shapes, batch_sizes):
        gate.wait(20)
        return real_warm(self, shapes, batch_sizes)

    monkeypatch.setattr(runtime.ModelRuntime, "warm", slow_warm)
    c = await serve(ready=False)
    try:
        r = await c.get("/health/ready")
        e = _error(r, 503, "not_ready")
        assert r.headers["Retry-After"] and "warming" in e["message"]
        assert (await c.get("/health/live")).status_code == 200
        r = await c.post("/segment", content=to_png(random_rgb(10, 32, 32)))
        _error(r, 503, "not_ready")
        assert "Retry-After" in r.headers
        assert (await c.get("/v2/health/ready")).status_code == 503
        assert 'enet_serve_model_ready{model="enet-camvid"} 0.0' in (await c.get("/metrics")).text
    finally:
        gate.set()
    for _ in range(200):
        if (await c.get("/health/ready")).status_code == 200:
            break
        await asyncio.sleep(0.02)
    assert (await c.get("/health/ready")).json()["status"] == "ready"
    assert (await c.post("/segment", content=to_png(random_rgb(10, 32, 32)))).status_code == 200


async def test_queue_full_and_deadline(serve, monkeypatch):
    gate = threading.Event()
    gate.set()
    real_run = runtime.Session.run

    def gated(self, arrays):
        gate.wait(20)
        return real_run(self, arrays)

    monkeypatch.setattr(runtime.Session, "run", gated)
    c = await serve(max_batch_size=1, max_queue=2, request_timeout_s=0.3)
    gate.clear()
    img = to_png(random_rgb(11, 32, 32))
    try:
        first = asyncio.ensure_future(c.post("/segment", content=img))  # runs (blocked)
        await asyncio.sleep(0.1)
        queued = [asyncio.ensure_future(c.post("/segment", content=img)) for _ in range(2)]
        await asyncio.sleep(0.1)
        r = await c.post("/segment", content=img)
        _error(r, 503, "queue_full")
        assert r.headers["Retry-After"]
        for r in await asyncio.gather(*queued):
            _error(r, 504, "deadline_exceeded")
    finally:
        gate.set()
    assert (await first).status_code == 200
    assert 'enet_serve_deadline_exceeded_total{model="enet-camvid"} 2.0' in (await c.get("/metrics")).text


async def test_openapi_docs(serve):
    c = await serve()
    spec = (await c.get("/openapi.json")).json()
    for path in ("/segment", "/classify", "/models", "/models/{name}", "/health/live", "/health/ready", "/metrics",
                 "/v2/models/{name}/infer"):
        assert path in spec["paths"], path
    body = spec["paths"]["/segment"]["post"]["requestBody"]["content"]
    assert "image/jpeg" in body and "multipart/form-data" in body
    params = {p["name"]: p for p in spec["paths"]["/segment"]["post"]["parameters"]}
    assert params["model"]["in"] == "query" and params["format"]["in"] == "query"
    for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}", "/v2/models/{name}/infer",
                 "/v2/models/{name}/versions/{version}/infer"):
        op = spec["paths"][path].get("get") or spec["paths"][path]["post"]
        where = {p["name"]: p["in"] for p in op["parameters"]}
        assert where == ({"name": "path", "version": "path"} if "{version}" in path else {"name": "path"}), path
    assert (await c.get("/docs")).status_code == 200


# -- v2 -------------------------------------------------------------------------------------------------

async def test_v2_metadata_and_ready(serve):
    c = await serve()
    assert (await c.get("/v2")).json()["name"] == "enet-serve"
    assert (await c.get("/v2/health/live")).status_code == 200
    assert (await c.get("/v2/health/ready")).status_code == 200
    meta = (await c.get("/v2/models/lenet5-fashion")).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
    assert (await c.get("/v2/models/lenet5-fashion/versions/1")).status_code == 200
    _error(await c.get("/v2/models/lenet5-fashion/versions/7"), 404)
    assert (await c.get("/v2/models/enet-camvid/ready")).status_code == 200
    _error(await c.get("/v2/models/nope/ready"), 404)


async def test_v2_infer_json_and_binary(serve, tiny_repo):
    c = await serve()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    s = ort.InferenceSession(str(tiny_repo / "lenet5-fashion/1/model.fp32.onnx"), providers=["CPUExecutionProvider"])
    expected = s.run(None, {"image": x})[0]
    req = {"id": "a1", "inputs": [{"name": "image", "shape": [3, 28, 28, 1], "datatype": "UINT8",
                                    "data": x.ravel().tolist()}]}
    r = await c.post("/v2/models/lenet5-fashion/infer", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "lenet5-fashion" and out["id"] == "a1"
    (t,) = out["outputs"]
    assert t["name"] == "probabilities" and t["datatype"] == "FP32" and t["shape"] == [3, 10]
    assert np.allclose(np.array(t["data"]).reshape(3, 10), expected, atol=1e-6)

    # binary tensor extension, as tritonclient sends it
    header = json.dumps({"inputs": [{"name": "image", "shape": [3, 28, 28, 1], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    r = await c.post("/v2/models/lenet5-fashion/versions/1/infer", content=header + x.tobytes(),
                     headers={"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(r.content[:n])
    size = meta["outputs"][0]["parameters"]["binary_data_size"]
    got = np.frombuffer(r.content[n:n + size], np.float32).reshape(3, 10)
    assert np.allclose(got, expected, atol=1e-6)

    # segmentation with nested JSON data at a dynamic size
    img = random_rgb(12, 16, 24)
    r = await c.post("/v2/models/enet-camvid/infer", json={"inputs": [
        {"name": "image", "shape": [1, 16, 24, 3], "datatype": "UINT8", "data": img[None].tolist()}]})
    assert r.status_code == 200, r.text
    (t,) = r.json()["outputs"]
    assert t["shape"] == [1, 16, 24] and t["datatype"] == "UINT8"
    assert np.array_equal(np.array(t["data"], np.uint8).reshape(16, 24), _solo_mask(tiny_repo, img))


async def test_v2_batch_larger_than_the_queue_is_413_not_a_retry(serve):
    c = await serve(max_queue=2)
    x = np.zeros((3, 28, 28, 1), np.uint8)
    r = await c.post("/v2/models/lenet5-fashion/infer", json={"inputs": [
        {"name": "image", "shape": list(x.shape), "datatype": "UINT8", "data": x.ravel().tolist()}]})
    _error(r, 413, "payload_too_large")
    assert "max_queue" in error_of(r)["message"] and "Retry-After" not in r.headers
    r = await c.post("/v2/models/lenet5-fashion/infer", json={"inputs": [
        {"name": "image", "shape": [2, 28, 28, 1], "datatype": "UINT8", "data": x[:2].ravel().tolist()}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 10]


async def test_v2_infer_errors(serve):
    c = await serve()
    url = "/v2/models/lenet5-fashion/infer"
    _error(await c.post(url, content=b"{not json"), 400)
    _error(await c.post(url, json={"inputs": []}), 400)
    _error(await c.post(url, json={"inputs": [{"name": "x", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                                               "data": [0] * 784}]}), 400)
    _error(await c.post(url, json={"inputs": [{"name": "image", "shape": [1, 27, 28, 1], "datatype": "UINT8",
                                               "data": [0] * 756}]}), 400)
    _error(await c.post(url, json={"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32",
                                               "data": [0.0] * 784}]}), 400)
    _error(await c.post(url, json={"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                                               "data": [0] * 10}]}), 400)
    _error(await c.post(url, json={"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                                               "data": [300] * 784}]}), 400)
    _error(await c.post("/v2/models/nope/infer", json={"inputs": []}), 404)


async def test_v2_errors_are_in_the_protocols_form(serve):
    """tritonclient and perf_analyzer read a v2 error's `error` as a string (perf_analyzer's C++ client
    cannot read an object there); the rest of the API keeps `{"error": {"code", "message"}}`."""
    c = await serve(api_keys=["k1"])
    for r in (await c.post("/v2/models/nope/infer", json={"inputs": []}, headers={"X-API-Key": "k1"}),  # handler
              await c.get("/v2/models/lenet5-fashion"),  # 401 from the key's dependency
              await c.get("/v2/no/such/route")):  # Starlette's own 404
        body = r.json()
        assert r.status_code in (401, 404) and set(body) == {"error", "code"}, body
        assert isinstance(body["error"], str) and body["error"], body
    assert r.json()["code"] == "not_found"
    body = (await c.get("/models/nope", headers={"X-API-Key": "k1"})).json()
    assert set(body["error"]) >= {"code", "message"}
    schema = (await c.get("/openapi.json")).json()
    v2_infer = schema["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert v2_infer["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/V2ErrorResponse")
    assert v2_infer["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/V2ErrorResponse")
    segment = schema["paths"]["/segment"]["post"]["responses"]
    assert segment["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


async def test_v2_json_python_cannot_read_is_400(serve):
    c = await serve()
    url = "/v2/models/lenet5-fashion/infer"
    big = ('{"inputs": [{"name": "image", "shape": [%s, 28, 28, 1], "datatype": "UINT8", "data": [0]}]}'
           % ("9" * 5000)).encode()
    assert "4300 digits" in _error(await c.post(url, content=big), 400, "bad_request")["message"]
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert "nested too deeply" in _error(await c.post(url, content=deep), 400, "bad_request")["message"]


async def test_v2_requested_outputs_are_checked_before_the_batch_runs(serve):
    c = await serve()
    url = "/v2/models/lenet5-fashion/infer"
    image = {"name": "image", "shape": [2, 28, 28, 1], "datatype": "UINT8", "data": [0] * (2 * 784)}
    message = _error(await c.post(url, json={"inputs": [image], "outputs": [{"name": "probabilites"}]}),
                     400, "bad_request")["message"]
    assert "no output 'probabilites'" in message and "probabilities" in message
    for flags in ({"parameters": {"binary_data_output": "false"}},
                  {"outputs": [{"name": "probabilities", "parameters": {"binary_data": "true"}}]}):
        message = _error(await c.post(url, json={"inputs": [image], **flags}), 400, "bad_request")["message"]
        assert "must be a JSON boolean" in message
    batches = [line for line in (await c.get("/metrics")).text.splitlines()
               if line.startswith("enet_serve_batches_total{")]
    assert batches == [], batches  # refused before the queue: no batch ran
    r = await c.post(url, json={"inputs": [image], "parameters": {"binary_data_output": False}})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 10]
