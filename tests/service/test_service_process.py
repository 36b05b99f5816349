"""Reliability against real uvicorn processes: the drain on SIGTERM (requests running and queued are
answered; past the grace, 503), a trickling body cut off with 408, clients that vanish while queued
never run, a broken model that stops the start (exit 3) or, with --no-exit-on-error, does not, and
request ids on the access log lines."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from svc_helpers import REPO_ROOT, copy_model, random_rgb, stop_process, to_png, write_model
from test_service_reliability import CLS_CONFIG, corrupt_model

pytestmark = pytest.mark.slow


def slow_cls_graph(matmuls: int, side: int = 384) -> onnx.ModelProto:
    """A Fashion-MNIST-shaped classifier that takes 2-6 ms per image per matmul on one thread: a chain of
    side x side matmuls that depends on the input (nothing to fold) and adds 0 to the logits."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (784, 10)).astype(np.float32)
    a = rng.normal(0, 0.01, (784, side)).astype(np.float32)
    b = (np.eye(side, dtype=np.float32) * 0.5)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "inv"], ["x"]),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("MatMul", ["flat", "a"], ["h"]),
        helper.make_node("Reshape", ["h", "col_shape"], ["col"]),
        helper.make_node("Mul", ["col", "ones"], ["m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "b"], [f"m{i+1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{matmuls}", "axes"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Unsqueeze", ["z", "axis1"], ["z1"]),
        helper.make_node("Add", ["logits", "z1"], ["l2"]),
        helper.make_node("Softmax", ["l2"], ["probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array(1 / 255.0, np.float32), "inv"),
             numpy_helper.from_array(np.array([-1, 784], np.int64), "shape"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(a, "a"),
             numpy_helper.from_array(np.array([-1, side, 1], np.int64), "col_shape"),
             numpy_helper.from_array(np.ones((1, side), np.float32), "ones"),
             numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(nodes, "slow_cls",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _slow_repo(tmp_path_factory, matmuls: int) -> Path:
    repo = tmp_path_factory.mktemp(f"slow_repo_{matmuls}")
    write_model(repo, "lenet5-fashion", slow_cls_graph(matmuls), CLS_CONFIG)
    return repo


@pytest.fixture(scope="module")
def slower_repo(tmp_path_factory) -> Path:
    """lenet5-fashion as a classifier that takes 1-2.5 s per image on one thread on a busy machine, 0.25 s
    on an idle one (where 96 matmuls answered eight images before a drain could start)."""
    return _slow_repo(tmp_path_factory, 480)


@pytest.fixture(scope="module")
def slowest_repo(tmp_path_factory) -> Path:
    """lenet5-fashion at 1.5-7 s per image: the first request must outlast queueing three more and closing them,
    also on a fast machine whose polls stall (0.45 s per image at 480 matmuls was seen)."""
    return _slow_repo(tmp_path_factory, 1440)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"

    def text(self) -> str:
        return self.log.read_text()

    def metric(self, prefix: str) -> float:
        for line in httpx.get(self.base + "/metrics", timeout=10).text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_until(self, predicate, timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.text()}"
            time.sleep(0.02)


@contextlib.contextmanager
def server(tmp_path: Path, repo: Path, *flags: str, ready: bool = True):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENET_SERVE_")}
    log_path = tmp_path / f"server-{port}.log"
    cmd = [sys.executable, "-m", "enet_serve.service", "--host", "127.0.0.1", "--port", str(port),
           "--repository", str(repo), "--tune-batch-size" if "--tune-batch-size" in flags else "--no-tune-batch-size",
           *[f for f in flags if f != "--tune-batch-size"]]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    p = Process(proc, port, log_path)
    try:
        if ready:
            def is_ready() -> bool:
                try:
                    return httpx.get(p.base + "/health/ready", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False

            p.wait_until(is_ready, 90, "readiness")
        yield p
    finally:
        if proc.poll() is None:
            stop_process(proc)


SLOW = ("--instances", "1", "--no-solo-instance", "--intra-op-threads", "1", "--max-batch-size", "1")
DECODED = 'enet_serve_decode_duration_seconds_count{model="lenet5-fashion"}'  # requests accepted and queued
IMAGE = to_png(random_rgb(1, 28, 28)[:, :, 0])


def post(base: str, path: str = "/classify", body: bytes = IMAGE, **headers) -> httpx.Response:
    return httpx.post(base + path, content=body, headers={"Content-Type": "image/png", **headers}, timeout=60)


def _never_ready(base: str) -> bool:
    """True when readiness is not 200: 503 (draining) or no listener any more."""
    try:
        return httpx.get(base + "/health/ready", timeout=2).status_code == 503
    except httpx.TransportError:
        return True


def test_sigterm_drain_answers_running_and_queued(slower_repo, tmp_path):
    with server(tmp_path, slower_repo, *SLOW, "--drain-timeout-s", "30", "--max-queue", "64") as p:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, p.base, **{"X-Request-ID": f"drain-{i}"}) for i in range(8)]
            p.wait_until(lambda: p.metric(DECODED) == 8, 20, "all eight accepted")  # 1-2 running, the rest queued
            p.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            assert _never_ready(p.base)  # at once: 503, or the listener is already gone
            time.sleep(0.4)
            with pytest.raises(httpx.ConnectError):  # the listener has stopped accepting
                httpx.get(p.base + "/health/live", timeout=2)
            assert not all(f.done() for f in futures), "nothing was left to drain"
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        assert [r.headers["X-Request-ID"] for r in responses] == [f"drain-{i}" for i in range(8)]
        p.proc.wait(30)
        assert time.monotonic() - sent < 30
    text = p.text()
    assert p.proc.returncode in (0, -signal.SIGTERM), text
    assert "every request answered" in text and "Traceback" not in text, text
    # the access log lines carry the request ids
    assert any("[drain-3]" in line and "POST /classify" in line for line in text.splitlines()), text


def test_sigterm_grace_over_answers_503(slower_repo, tmp_path):
    # 16 images at 1-2.5 s each cannot be half done within the wait for their decode plus a 1 s grace,
    # however fast the machine: what is left is answered 503, and nothing is dropped
    with server(tmp_path, slower_repo, *SLOW, "--drain-timeout-s", "1", "--max-queue", "64") as p:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(post, p.base) for _ in range(16)]
            p.wait_until(lambda: p.metric(DECODED) == 16, 20, "all sixteen accepted")
            p.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            responses = [f.result() for f in futures]  # every client gets an answer: none is dropped
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and statuses.count(503) >= 8, statuses
        for r in responses:
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "shutting_down" and r.headers["Retry-After"]
        p.proc.wait(30)
        assert time.monotonic() - sent < 1 + 2 + 3  # grace + time to answer + the last batch
    assert "grace period of 1 s over" in p.text()


def test_sigterm_closes_open_streams_with_1012(tiny_repo, tmp_path):
    """An open /segment/stream does not hold the drain: it is closed with 1012 (service restart), so the
    client reconnects elsewhere, and the process exits at once."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def stream_through_sigterm(p) -> tuple[int | None, float]:
        async with connect(p.base.replace("http://", "ws://") + "/segment/stream?format=json") as ws:
            await ws.send(to_png(random_rgb(2)))
            assert json.loads(await ws.recv())["frame"] == 0
            p.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code, time.monotonic() - sent

    with server(tmp_path, tiny_repo, "--drain-timeout-s", "30") as p:
        code, seconds = asyncio.run(stream_through_sigterm(p))
        p.proc.wait(10)
    assert code == 1012 and seconds < 5, (code, seconds)
    assert "every request answered" in p.text(), p.text()


def _raw_request(port: int, path: str, body: bytes, length: int | None = None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
    s.sendall(head.encode() + body)
    return s


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_trickled_body_gets_408(tiny_repo, tmp_path):
    with server(tmp_path, tiny_repo, "--body-timeout-s", "1", "--decode-threads", "1") as p:
        s = _raw_request(p.port, "/classify", IMAGE[:1], length=len(IMAGE))
        start = time.monotonic()
        try:
            answer = b""
            for byte in IMAGE[1:12]:  # one byte every 0.25 s: slower than the body timeout allows
                assert post(p.base).status_code == 200  # others are served meanwhile
                time.sleep(0.25)
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    break  # the server has answered and closed
            answer = _read_response(s)
        finally:
            s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"body_timeout" in answer and b"x-request-id:" in answer.lower()
        assert 0.9 < time.monotonic() - start < 5


def test_vanished_clients_are_never_run(slowest_repo, tmp_path):
    with server(tmp_path, slowest_repo, *SLOW) as p:
        first = _raw_request(p.port, "/classify", IMAGE)
        p.wait_until(lambda: p.metric(DECODED) == 1, what="the first to run")  # running now, for 1.5-7 s
        queued = [_raw_request(p.port, "/classify", IMAGE) for _ in range(3)]
        # decoded means queued (the decode is the step before the queue); a counter, unlike the queue-depth
        # gauge, cannot be missed between two polls (a stalled poll once saw the gauge only after it fell)
        p.wait_until(lambda: p.metric(DECODED) == 4, what="three queued")
        assert p.metric('enet_serve_batch_size_count{model="lenet5-fashion"}') == 0  # the first still runs
        for s in queued:
            s.close()
        gone = 'enet_serve_requests_total{model="lenet5-fashion",route="/classify",status="499"}'
        p.wait_until(lambda: p.metric(gone) == 3, what="three dropped")
        assert _read_response(first).startswith(b"HTTP/1.1 200")
        first.close()
        assert post(p.base).status_code == 200  # the batcher moves past the dropped items
        assert p.metric('enet_serve_batch_size_count{model="lenet5-fashion"}') == 2  # the first and the last only


@pytest.fixture
def broken_repo(tiny_repo, tmp_path) -> tuple[Path, str]:
    repo = tmp_path / "broken"
    copy_model(tiny_repo, "enet-camvid", repo)
    copy_model(tiny_repo, "lenet5-fashion", repo)
    return repo, corrupt_model(repo, "lenet5-fashion")


def test_broken_model_exits_3_naming_the_file(broken_repo, tmp_path):
    repo, bad_file = broken_repo
    with server(tmp_path, repo, "--precision", "fp32", ready=False) as p:
        assert p.proc.wait(60) == 3, p.text()
    assert bad_file in p.text() and "onnxruntime cannot load it" in p.text()


def test_no_exit_on_error_serves_the_others_with_json_logs(broken_repo, tmp_path):
    repo, bad_file = broken_repo
    with server(tmp_path, repo, "--precision", "fp32", "--no-exit-on-error", "--log-format", "json") as p:
        assert post(p.base, "/segment", to_png(random_rgb(2, 32, 32))).status_code == 200
        r = post(p.base, **{"X-Request-ID": "broken-1"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"
        assert bad_file in r.json()["error"]["message"]
    lines = [json.loads(line) for line in p.text().splitlines() if line.startswith("{")]
    assert any(line["level"] == "ERROR" and bad_file in line["message"] for line in lines), p.text()
    assert any(line["request_id"] == "broken-1" and "/classify" in line["message"] for line in lines), p.text()
