"""Reliability in-process: a broken model beside working ones (exit_on_error off), request ids, the
in-flight limits (408 slow body, 503 past max_connections, a vanished client's item never run, 503
after the drain's grace). The same behaviours against real uvicorn processes: test_service_process.py."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import numpy as np
import pytest
from onnx import numpy_helper

from enet_serve.service import runtime
from enet_serve.service.errors import ModelLoadError
from enet_serve.service.logs import JsonFormatter, log_config
from enet_serve.service.request_id import REQUEST_ID, RequestIdFilter
from enet_serve.service.settings import Settings
from svc_helpers import cls_graph, copy_model, error_of, random_rgb, sha256, to_png, write_model

CLS_CONFIG = {
    "architecture": "tiny-cls", "task": "classify",
    "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 1, "height": 28, "width": 28,
              "dynamic_size": False, "size_multiple": 1},
    "outputs": [{"name": "probabilities", "dtype": "float32", "shape": ["N", 10]}],
    "labels": [str(i) for i in range(10)],
}


def _error(r, status, code):
    assert r.status_code == status, r.text
    assert error_of(r)["code"] == code, r.text
    return error_of(r)


def corrupt_model(repo, name: str) -> str:
    """Overwrite the model's fp32 ONNX file with garbage whose sha256 and size config.json then match
    (a corrupt file that passes the checksum, so onnxruntime is the one to refuse it)."""
    path = repo / name / "1" / "model.fp32.onnx"
    path.write_bytes(b"not an onnx model" * 64)
    cfg = json.loads((repo / name / "config.json").read_text())
    cfg["files"]["fp32"].update(sha256=sha256(path), bytes=path.stat().st_size)
    (repo / name / "config.json").write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture
def broken_repo(tiny_repo, tmp_path):
    """enet-camvid works, lenet5-fashion's file is corrupt."""
    repo = tmp_path / "repo"
    copy_model(tiny_repo, "enet-camvid", repo)
    copy_model(tiny_repo, "lenet5-fashion", repo)
    corrupt_model(repo, "lenet5-fashion")
    return repo


async def test_broken_model_stops_the_start_by_default(serve, broken_repo):
    with pytest.raises(ModelLoadError, match="model.fp32.onnx"):
        await serve(repository=broken_repo, precision="fp32")


async def test_broken_model_beside_working_ones(serve, broken_repo):
    c = await serve(repository=broken_repo, precision="fp32", exit_on_error=False)
    ready = (await c.get("/health/ready")).json()
    assert ready["status"] == "ready" and ready["models"] == {"enet-camvid": True, "lenet5-fashion": False}
    assert "model.fp32.onnx" in ready["failed"]["lenet5-fashion"]
    assert (await c.get("/v2/health/ready")).status_code == 200

    models = (await c.get("/models")).json()
    assert [m["name"] for m in models["models"]] == ["enet-camvid"]
    [fault] = models["failed"]
    assert fault["name"] == "lenet5-fashion" and fault["stage"] == "load"
    assert fault["file"].endswith("lenet5-fashion/1/model.fp32.onnx") and "onnxruntime cannot load it" in fault["reason"]

    img = to_png(random_rgb(1, 28, 28)[:, :, 0])
    for path in ("/classify", "/classify?model=lenet5-fashion"):
        r = await c.post(path, content=img)
        e = _error(r, 503, "model_failed")
        assert "lenet5-fashion" in e["message"] and "model.fp32.onnx" in e["message"] and r.headers["Retry-After"]
    _error(await c.get("/models/lenet5-fashion"), 503, "model_failed")
    _error(await c.get("/v2/models/lenet5-fashion/ready"), 503, "model_failed")
    _error(await c.get("/v2/models/lenet5-fashion"), 503, "model_failed")
    _error(await c.get("/v2/models/nope/ready"), 404, "model_not_found")

    assert (await c.post("/segment", content=to_png(random_rgb(2, 32, 32)))).status_code == 200
    text = (await c.get("/metrics")).text
    assert 'enet_serve_model_failed{model="lenet5-fashion",stage="load"} 1.0' in text
    assert 'enet_serve_model_ready{model="lenet5-fashion"} 0.0' in text
    assert 'enet_serve_model_ready{model="enet-camvid"} 1.0' in text


async def test_a_model_that_failed_to_load_is_in_the_model_enums(serve, broken_repo):
    """The schema's `model=` lists what the server answers for: lenet5-fashion, the default classifier,
    failed to load (its task unknown to the server), and every route answers it with 503, not 422."""
    c = await serve(repository=broken_repo, precision="fp32", exit_on_error=False)
    paths = (await c.get("/openapi.json")).json()["paths"]

    def enum(path):
        [model] = [p for p in paths[path]["post"]["parameters"] if p["name"] == "model"]
        return model["schema"]["enum"]

    assert enum("/classify") == ["lenet5-fashion"] and enum("/segment") == ["enet-camvid", "lenet5-fashion"]
    assert "503" in paths["/classify"]["post"]["responses"]
    img = to_png(random_rgb(1, 28, 28))
    for path in ("/classify", "/segment?model=lenet5-fashion"):
        _error(await c.post(path, content=img), 503, "model_failed")


async def test_broken_config_is_named(serve, tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    copy_model(tiny_repo, "enet-camvid", repo)
    (repo / "lenet5-fashion").mkdir()
    (repo / "lenet5-fashion" / "config.json").write_text("{not json")
    c = await serve(repository=repo, exit_on_error=False)
    [fault] = (await c.get("/models")).json()["failed"]
    assert fault["file"].endswith("lenet5-fashion/config.json") and fault["stage"] == "load"
    # the default classifier failed: /classify says why instead of "no classification model"
    e = _error(await c.post("/classify", content=to_png(random_rgb(1, 28, 28))), 503, "model_failed")
    assert "config.json" in e["message"]


def _failing_at_run(repo, name: str) -> None:
    """A classifier that loads but fails when run: its Reshape asks for rows of 785 values of a 784-pixel
    image (the input's height and width are left symbolic, so onnxruntime cannot see it at load)."""
    graph = cls_graph(10, 28, 1)
    for init in graph.graph.initializer:
        if init.name == "shape":
            init.CopyFrom(numpy_helper.from_array(np.array([-1, 785], np.int64), "shape"))
        elif init.name == "w":
            init.CopyFrom(numpy_helper.from_array(np.ones((785, 10), np.float32), "w"))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "H", "W"
    write_model(repo, name, graph, CLS_CONFIG)


async def test_warm_up_failure_beside_working_ones(serve, tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    copy_model(tiny_repo, "enet-camvid", repo)
    copy_model(tiny_repo, "lenet5-fashion", repo)
    _failing_at_run(repo, "bad-cls")
    c = await serve(repository=repo, exit_on_error=False)
    ready = (await c.get("/health/ready")).json()
    assert ready["models"] == {"bad-cls": False, "enet-camvid": True, "lenet5-fashion": True}
    [fault] = (await c.get("/models")).json()["failed"]
    assert fault["stage"] == "warm-up" and fault["file"].endswith("bad-cls/1/model.fp32.onnx")
    _error(await c.post("/classify?model=bad-cls", content=to_png(random_rgb(1, 28, 28))), 503, "model_failed")
    assert (await c.post("/classify", content=to_png(random_rgb(1, 28, 28)))).status_code == 200
    assert 'enet_serve_model_failed{model="bad-cls",stage="warm-up"} 1.0' in (await c.get("/metrics")).text


async def test_warm_up_failure_with_exit_on_error_stops_the_server(serve, tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    copy_model(tiny_repo, "enet-camvid", repo)
    _failing_at_run(repo, "bad-cls")
    c = await serve(repository=repo, ready=False)
    lifecycle = c.app.state.lifecycle
    stopped: list[str] = []
    lifecycle.on_fatal = stopped.append  # what the process runner does: stop the server (exit 3)
    for _ in range(300):
        if lifecycle.fatal:
            break
        await asyncio.sleep(0.02)
    assert lifecycle.fatal and "bad-cls" in lifecycle.fatal and "model.fp32.onnx" in lifecycle.fatal
    e = _error(await c.get("/health/ready"), 503, "not_ready")
    assert "bad-cls" in e["message"]


async def test_a_fault_after_the_batches_ran_is_that_models_warm_up_fault(serve, tiny_repo, tmp_path, monkeypatch):
    # The readiness bookkeeping after the warm-up batches is part of warming a model: an error there
    # once ended the warm-up task silently and left the server "warming up" for good.
    from enet_serve.service import server
    repo = tmp_path / "repo"
    copy_model(tiny_repo, "enet-camvid", repo)
    copy_model(tiny_repo, "lenet5-fashion", repo)
    info = server.log.info

    def failing_for_lenet(msg, *args, **kwargs):
        if args and args[0] == "lenet5-fashion" and "warm" in msg:
            raise RuntimeError("bookkeeping broke")
        return info(msg, *args, **kwargs)

    monkeypatch.setattr(server.log, "info", failing_for_lenet)
    c = await serve(repository=repo, exit_on_error=False)
    ready = (await c.get("/health/ready")).json()
    assert ready["models"] == {"enet-camvid": True, "lenet5-fashion": False}
    [fault] = (await c.get("/models")).json()["failed"]
    assert fault["name"] == "lenet5-fashion" and fault["stage"] == "warm-up" and "bookkeeping broke" in fault["reason"]


async def test_a_warm_up_that_dies_says_why_in_readiness(serve, tiny_repo, tmp_path, monkeypatch):
    from enet_serve.service.server import ModelServer
    repo = tmp_path / "repo"
    copy_model(tiny_repo, "enet-camvid", repo)
    _failing_at_run(repo, "bad-cls")

    def broken_record(self, fault):
        raise RuntimeError("the fault could not be recorded")

    monkeypatch.setattr(ModelServer, "_record_fault", broken_record)
    c = await serve(repository=repo, exit_on_error=False, ready=False)
    for _ in range(300):
        r = await c.get("/health/ready")
        if "warm-up stopped" in r.text:
            break
        await asyncio.sleep(0.02)
    e = _error(r, 503, "not_ready")
    assert "warm-up stopped" in e["message"] and "the fault could not be recorded" in e["message"]


# -- request ids ----------------------------------------------------------------------------------------

async def test_request_id_generated_echoed_and_on_errors(serve):
    c = await serve(api_keys=["k"])
    ids = set()
    for method, path, status in (("GET", "/health/live", 200), ("GET", "/nope", 404), ("GET", "/models", 401),
                                 ("POST", "/segment?format=bad", 401)):
        r = await c.request(method, path)
        assert r.status_code == status
        rid = r.headers["X-Request-ID"]
        assert len(rid) == 32 and int(rid, 16) >= 0
        ids.add(rid)
    assert len(ids) == 4
    r = await c.get("/health/live", headers={"X-Request-ID": "trace-42.a:b"})
    assert r.headers["X-Request-ID"] == "trace-42.a:b"
    for insane in ("has space", "x" * 129, "semi;colon"):
        r = await c.get("/health/live", headers={"X-Request-ID": insane})
        assert r.headers["X-Request-ID"] != insane and len(r.headers["X-Request-ID"]) == 32


async def test_log_lines_of_a_request_carry_its_id(serve, caplog, monkeypatch):
    broken = threading.Event()
    real_run = runtime.Session.run

    def breaking_run(self, arrays):
        if broken.is_set():
            raise RuntimeError("device lost")
        return real_run(self, arrays)

    monkeypatch.setattr(runtime.Session, "run", breaking_run)
    c = await serve()
    broken.set()
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO):
        r = await c.post("/segment", content=to_png(random_rgb(7, 32, 32)), headers={"X-Request-ID": "req-1"})
    _error(r, 500, "inference_failed")
    lines = [rec for rec in caplog.records if "POST /segment" in rec.getMessage()]
    assert lines and all(rec.request_id == "req-1" for rec in lines), [(x.getMessage(), x.request_id) for x in lines]
    assert REQUEST_ID.get() == "-"


def test_json_log_lines():
    config = log_config(Settings(log_format="json"))
    assert config["formatters"]["line"]["()"] is JsonFormatter
    record = logging.LogRecord("service", logging.ERROR, __file__, 1, "model %s failed", ("m",), None)
    token = REQUEST_ID.set("abc")
    try:
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "abc" and line["message"] == "model m failed" and line["level"] == "ERROR"
    assert "%(request_id)s" in log_config(Settings())["formatters"]["line"]["format"]


# -- in-flight limits -------------------------------------------------------------------------------------

async def _trickle(data: bytes, every_s: float, gate: asyncio.Event | None = None):
    for i in range(len(data)):
        if gate is not None and i == 1:
            await gate.wait()
        yield data[i:i + 1]
        await asyncio.sleep(every_s)


async def test_slow_body_gets_408_and_holds_no_decode_thread(serve):
    c = await serve(body_timeout_s=0.6, decode_threads=1)
    img = to_png(random_rgb(3, 32, 32))
    slow = asyncio.ensure_future(c.post("/segment", content=_trickle(img, 0.1),
                                        headers={"Content-Type": "image/png", "Content-Length": str(len(img))}))
    await asyncio.sleep(0.2)
    # meanwhile the one decode thread serves others at once
    for _ in range(3):
        r = await c.post("/segment", content=img)
        assert r.status_code == 200
    assert not slow.done()
    r = await slow
    e = _error(r, 408, "body_timeout")
    assert "body_timeout_s" in e["message"] and r.headers["connection"] == "close"
    assert 'route="/segment",status="408"' in (await c.get("/metrics")).text


async def test_connection_limit_503_and_probes_still_answer(serve):
    c = await serve(max_connections=2)
    gate = asyncio.Event()
    img = to_png(random_rgb(4, 32, 32))
    held = [asyncio.ensure_future(c.post("/segment", content=_trickle(img[:3], 0.0, gate))) for _ in range(2)]
    await asyncio.sleep(0.1)
    r = await c.post("/segment", content=img)
    e = _error(r, 503, "too_many_connections")
    assert "max_connections=2" in e["message"] and r.headers["Retry-After"] and r.headers["X-Request-ID"]
    assert (await c.get("/health/ready")).status_code == 200
    assert (await c.get("/metrics")).status_code == 200
    gate.set()
    assert [h.status_code for h in await asyncio.gather(*held)] == [400, 400]  # 3 bytes: not an image
    assert (await c.post("/segment", content=img)).status_code == 200


def _gate_sessions(monkeypatch) -> tuple[threading.Event, list[int]]:
    """Session.run waits for the returned gate; the list counts the images it ran."""
    gate, ran = threading.Event(), []
    real_run = runtime.Session.run

    def gated(self, arrays):
        gate.wait(20)
        ran.append(len(arrays))
        return real_run(self, arrays)

    monkeypatch.setattr(runtime.Session, "run", gated)
    return gate, ran


async def _call(app, path: str, body: bytes, disconnect: asyncio.Event, more_body: bool = False) -> list[dict]:
    """One request straight through the ASGI app, whose client disconnects when `disconnect` is set
    (with `more_body`, before the rest of its body)."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": more_body}]

    async def receive():
        if messages:
            return messages.pop(0)
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"content-type", b"image/png"), (b"host", b"testserver")], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}
    await app(scope, receive, send)
    return sent


async def _until(condition, what: str, timeout: float = 5.0) -> None:
    """Wait for `condition()` (a fixed sleep was too short once, on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        await asyncio.sleep(0.01)


async def test_disconnected_client_is_never_run(serve, monkeypatch):
    gate, ran = _gate_sessions(monkeypatch)
    gate.set()
    c = await serve(max_batch_size=1, instances=1, solo_instance=False)
    gate.clear()
    ran.clear()  # the warm-up's
    img = to_png(random_rgb(5, 32, 32))
    stay, leave = asyncio.Event(), asyncio.Event()
    batcher = c.app.state.server.models["enet-camvid"].batcher
    running = asyncio.ensure_future(_call(c.app, "/segment?format=png", img, stay))  # runs (blocked by the gate)
    await _until(lambda: batcher._running, "the first request's batch to start")
    queued = [asyncio.ensure_future(_call(c.app, "/segment?format=png", img, leave)) for _ in range(3)]
    await _until(lambda: batcher.depth == 3, "three requests queued behind it")
    leave.set()  # the three queued clients go away
    gone = await asyncio.wait_for(asyncio.gather(*queued), 5)
    assert gone == [[], [], []]  # nothing sent to nobody
    gate.set()
    first = await asyncio.wait_for(running, 10)
    assert first[0]["status"] == 200
    await asyncio.sleep(0.2)
    assert ran == [1], f"batches run: {ran}"  # the three never ran
    assert 'route="/segment",status="499"} 3.0' in (await c.get("/metrics")).text


async def test_a_client_gone_during_its_upload_is_499_not_an_error(serve, caplog):
    c = await serve()
    gone = asyncio.Event()
    gone.set()
    sent = await asyncio.wait_for(_call(c.app, "/segment", to_png(random_rgb(5, 32, 32))[:100], gone, more_body=True), 5)
    assert sent == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    metrics = (await c.get("/metrics")).text
    assert 'route="/segment",status="499"} 1.0' in metrics and 'status="500"' not in metrics


async def test_grace_over_answers_503_to_what_is_left(serve, monkeypatch):
    gate, ran = _gate_sessions(monkeypatch)
    gate.set()
    c = await serve(max_batch_size=1, instances=1, solo_instance=False)
    gate.clear()
    img = to_png(random_rgb(6, 32, 32))
    try:
        pending = [asyncio.ensure_future(c.post("/segment", content=img)) for _ in range(3)]
        batcher = c.app.state.server.models["enet-camvid"].batcher
        await _until(lambda: batcher._running and batcher.depth == 2, "one request running, two queued")
        lifecycle = c.app.state.lifecycle
        lifecycle.begin_drain()
        e = _error(await c.get("/health/ready"), 503, "not_ready")
        assert "draining" in e["message"]
        lifecycle.end_grace()
        for r in await asyncio.wait_for(asyncio.gather(*pending), 5):
            e = _error(r, 503, "shutting_down")
            assert "grace period" in e["message"] and r.headers["Retry-After"]
        _error(await c.post("/segment", content=img), 503, "shutting_down")
    finally:
        gate.set()


def test_kubernetes_grace_covers_the_drain():
    """terminationGracePeriodSeconds >= preStop pause + drain_timeout_s, and the drain covers a request
    accepted at the last moment: its body (body_timeout_s) plus its queue deadline (request_timeout_s)."""
    import yaml

    from svc_helpers import REPO_ROOT

    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy/kubernetes/deployment.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    settings = Settings(**{k[len("ENET_SERVE_"):].lower(): v for k, v in env.items()
                           if v is not None and k != "ENET_SERVE_API_KEYS"})
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert settings.drain_timeout_s >= settings.body_timeout_s + settings.request_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= pause + settings.drain_timeout_s
