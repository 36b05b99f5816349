"""WS /segment/stream with a real client (websockets) against a real uvicorn: the newest frame wins, every
frame is answered or reported dropped, the answers equal POST /segment's, close codes, limits, metrics."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from enet_serve.service.api.stream import KEY_PROTOCOL
from enet_serve.service.logs import RedactKeyFilter, log_config

from enet_serve.service.newest_frame import Frame, NewestFrame
from enet_serve.service.settings import Settings
from answers_fixtures import write_confidence_model
from live_server import live_server
from svc_helpers import REPO_ROOT, camvid_jpegs, random_rgb, tiny_repository, to_png


def _ws(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + "/segment/stream" + (f"?{query}" if query else "")


async def _answers(ws, last: int, binary: bool) -> dict[int, tuple[dict, bytes | None]]:
    """Read answers until frame `last` is answered: {frame: (message, binary body)}."""
    got: dict[int, tuple[dict, bytes | None]] = {}
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        body = await asyncio.wait_for(ws.recv(), 60) if binary and "error" not in message else None
        got[message["frame"]] = (message, body)
        if message["frame"] == last:
            return got


async def _closed_with(ws) -> tuple[int, str, list[str]]:
    """(code, reason, text messages before the close) once the server closes the connection."""
    texts = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            texts.append(await asyncio.wait_for(ws.recv(), 30))
    close = info.value.rcvd
    assert close is not None
    return close.code, close.reason, texts


# -- the slot on its own ------------------------------------------------------------------------------

async def test_newest_frame_slot():
    slot = NewestFrame()
    assert slot.put(Frame(0, b"a", 0.0)) is None
    assert slot.put(Frame(1, b"b", 0.0)).index == 0
    assert slot.put(Frame(2, b"c", 0.0)).index == 1
    frame, dropped = await slot.take()
    assert (frame.index, dropped) == (2, [0, 1])
    waiting = asyncio.create_task(slot.take())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing waits: take() waits for the next frame
    slot.put(Frame(3, b"d", 0.0))
    frame, dropped = await waiting
    assert (frame.index, dropped) == (3, [])
    slot.put(Frame(4, b"e", 0.0))
    slot.close()
    assert await slot.take() is None


# -- the shipped ENet: 30 CamVid frames as fast as possible ------------------------------------------------

@pytest.fixture(scope="module")
def shipped_server(camvid_dir):
    settings = Settings(repository=REPO_ROOT / "model_repository", models=["enet-camvid"], max_batch_size=2,
                        tune_batch_size=False, access_log=False)
    with live_server(settings) as base:
        yield base


async def test_thirty_frames_newest_wins(shipped_server):
    frames = camvid_jpegs(30)
    async with connect(_ws(shipped_server, "format=png")) as ws:
        for data in frames:
            await ws.send(data)
        got = await _answers(ws, 29, binary=True)
    answered = set(got)
    dropped = [k for message, _ in got.values() for k in message["dropped"]]
    assert len(dropped) == len(set(dropped)) and not answered & set(dropped)
    assert answered | set(dropped) == set(range(30))  # every frame is answered or reported dropped
    assert dropped, "30 frames at once and none dropped: the stream built a backlog"
    for message, body in got.values():
        assert (message["width"], message["height"], message["model"]) == (480, 360, "enet-camvid")
        assert message["latency_ms"] > 0 and abs(sum(message["class_fractions"].values()) - 1) < 1e-3
        assert Image.open(io.BytesIO(body)).size == (480, 360)
    async with httpx.AsyncClient(base_url=shipped_server, timeout=60) as client:
        r = await client.post("/segment?format=png", content=frames[29], headers={"Content-Type": "image/jpeg"})
        assert got[29][1] == r.content  # the last frame's mask is exactly /segment's
        body = (await client.post("/segment", content=frames[29])).json()
        assert got[29][0]["class_fractions"] == body["class_fractions"]
        metrics = (await client.get("/metrics")).text
    assert f'enet_serve_stream_frames_total{{model="enet-camvid",result="answered"}} {float(len(answered))}' in metrics
    assert f'enet_serve_stream_frames_total{{model="enet-camvid",result="dropped"}} {float(len(dropped))}' in metrics
    assert 'enet_serve_stream_connections{model="enet-camvid"} 0.0' in metrics


async def test_json_and_rle_with_options(shipped_server):
    frame = camvid_jpegs(1)[0]
    async with httpx.AsyncClient(base_url=shipped_server, timeout=60) as client:
        want = (await client.post("/segment?format=rle&classes=Road,Car&regions=true", content=frame)).json()
    for fmt in ("rle", "json"):
        async with connect(_ws(shipped_server, f"format={fmt}&classes=Road,Car&regions=true")) as ws:
            await ws.send(frame)
            message, _ = (await _answers(ws, 0, binary=False))[0]
        assert message["dropped"] == [] and set(message["class_fractions"]) == {"Road", "Car"}
        assert message["regions"] == want["regions"]
        assert ("rle" in message) == (fmt == "rle") and ("mask_png" in message) == (fmt == "json")
        if fmt == "rle":
            assert message["rle"] == want["rle"]


async def test_bad_frames_are_answered_with_an_error(shipped_server):
    good = camvid_jpegs(1)[0]
    async with connect(_ws(shipped_server, "format=json")) as ws:
        await ws.send(b"not an image")
        message, _ = (await _answers(ws, 0, binary=False))[0]
        assert message["error"]["code"] == "bad_image"
        await ws.send(good)  # the stream goes on
        message, _ = (await _answers(ws, 1, binary=False))[1]
        assert "error" not in message and message["width"] == 480
        await ws.send("a text message")
        code, reason, _ = await _closed_with(ws)
    assert code == 4415 and "binary" in reason


@pytest.mark.parametrize("query, code, error", [
    ("model=nope", 4404, "model_not_found"),
    ("format=gif", 4422, "invalid_parameter"),
    ("classes=Road,Zebra", 4422, "unknown_class"),
    ("min_confidence=2", 4422, "invalid_parameter"),
    ("format=png&regions=true", 4422, "invalid_parameter"),
])
async def test_close_codes_at_the_start(shipped_server, query, code, error):
    async with connect(_ws(shipped_server, query)) as ws:
        closed, reason, texts = await _closed_with(ws)
    assert closed == code and reason
    assert json.loads(texts[0])["error"]["code"] == error


# -- limits, keys and confidence on the tiny models ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    repo = tiny_repository(tmp_path_factory.mktemp("stream_repo"))
    write_confidence_model(repo)
    settings = Settings(repository=repo, max_batch_size=4, tune_batch_size=False, access_log=False,
                        api_keys=["k1"], stream_max_connections=2, stream_max_frame_bytes=200_000)
    with live_server(settings) as base:
        yield base


async def test_api_keys(tiny_server):
    async with connect(_ws(tiny_server)) as ws:
        code, _, texts = await _closed_with(ws)
    assert code == 4401 and json.loads(texts[0])["error"]["code"] == "unauthorized"
    async with connect(_ws(tiny_server), additional_headers={"X-API-Key": "wrong"}) as ws:
        assert (await _closed_with(ws))[0] == 4401
    async with connect(_ws(tiny_server, "format=png"), additional_headers={"Authorization": "Bearer k1"}) as ws:
        await ws.send(to_png(random_rgb(1)))
        message, body = (await _answers(ws, 0, binary=True))[0]
    assert message["model"] == "enet-camvid" and Image.open(io.BytesIO(body)).size == (160, 120)


async def test_api_key_in_a_subprotocol_or_the_query_for_browsers(tiny_server):
    """A browser's WebSocket cannot send headers: the demo page offers the key as a subprotocol, which the
    server selects (a browser drops a connection that selects none it offered); ?api_key= works too."""
    def protocol(key: str) -> str:
        return KEY_PROTOCOL + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")

    for bad in (protocol("wrong"), KEY_PROTOCOL + "%%%"):
        async with connect(_ws(tiny_server), subprotocols=[bad]) as ws:
            assert (await _closed_with(ws))[0] == 4401
    async with connect(_ws(tiny_server, "format=png"), subprotocols=["other", protocol("k1")]) as ws:
        assert ws.subprotocol == protocol("k1")
        await ws.send(to_png(random_rgb(1)))
        message, _ = (await _answers(ws, 0, binary=True))[0]
    assert message["model"] == "enet-camvid"
    async with connect(_ws(tiny_server, "api_key=wrong")) as ws:
        assert (await _closed_with(ws))[0] == 4401
    async with connect(_ws(tiny_server, "format=png&api_key=k1")) as ws:
        await ws.send(to_png(random_rgb(1)))
        message, _ = (await _answers(ws, 0, binary=True))[0]
    assert message["model"] == "enet-camvid"


def test_a_key_in_a_logged_url_is_blanked():
    """uvicorn logs a WebSocket's URL, query included, even with access logs off: the key never reaches the log."""
    config = log_config(Settings())
    assert "redact_key" in config["handlers"]["stderr"]["filters"]
    assert config["filters"]["redact_key"]["()"] is RedactKeyFilter
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5000", "/segment/stream?api_key=s3cret&format=png"), None)
    assert RedactKeyFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /segment/stream?api_key=***&format=png" [accepted]'


@pytest.mark.parametrize("query,blanked", [
    ("api%5Fkey=s3cret&format=png", "api%5Fkey=***&format=png"),  # Starlette decodes names: this authenticates
    ("format=png&%61pi%5f%6Bey=s3cret", "format=png&%61pi%5f%6Bey=***"),
    ("api_key=s3cret&api%5Fkey=s3cret", "api_key=***&api%5Fkey=***"),
])
def test_a_percent_encoded_key_name_in_a_logged_url_is_blanked(query, blanked):
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5000", f"/segment/stream?{query}"), None)
    assert RedactKeyFilter().filter(record)
    assert record.getMessage() == f'127.0.0.1:5000 - "WebSocket /segment/stream?{blanked}" [accepted]'
    untouched = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "%s", ("/segment?format=png&x=1",), None)
    assert RedactKeyFilter().filter(untouched) and untouched.args == ("/segment?format=png&x=1",)


async def test_a_percent_encoded_key_name_authenticates(tiny_server):
    """Why the log filter must decode names: the server reads `api%5Fkey` as `api_key`."""
    async with connect(_ws(tiny_server, "format=png&api%5Fkey=k1")) as ws:
        await ws.send(to_png(random_rgb(1)))
        message, _ = (await _answers(ws, 0, binary=True))[0]
    assert message["model"] == "enet-camvid"


async def test_connection_limit(tiny_server):
    key = {"X-API-Key": "k1"}
    async with connect(_ws(tiny_server), additional_headers=key) as a, connect(_ws(tiny_server),
                                                                             additional_headers=key) as b:
        for ws in (a, b):  # both are open and answer
            await ws.send(to_png(random_rgb(2)))
            assert "error" not in (await _answers(ws, 0, binary=False))[0][0]
        async with connect(_ws(tiny_server), additional_headers=key) as c:
            code, reason, texts = await _closed_with(c)
        assert code == 4503 and "stream_max_connections=2" in reason
        assert json.loads(texts[0])["error"]["code"] == "too_many_streams"
    # the two have left (the server notices a close a moment after the client): a new one is let in
    async with httpx.AsyncClient(base_url=tiny_server, timeout=30) as client:
        for _ in range(100):
            if 'enet_serve_stream_connections{model="enet-camvid"} 0.0' in (await client.get("/metrics")).text:
                break
            await asyncio.sleep(0.02)
    async with connect(_ws(tiny_server), additional_headers=key) as ws:
        await ws.send(to_png(random_rgb(3)))
        assert "error" not in (await _answers(ws, 0, binary=False))[0][0]


async def test_frame_size_limit(tiny_server):
    big = to_png(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    assert len(big) > 200_000
    async with connect(_ws(tiny_server), additional_headers={"X-API-Key": "k1"}, max_size=None) as ws:
        await ws.send(big)
        code, _, _ = await _closed_with(ws)
    assert code == 1009  # message too big


async def test_confidence_stream(tiny_server):
    rgb = random_rgb(4)
    key = {"X-API-Key": "k1"}
    async with connect(_ws(tiny_server, "model=seg-confidence&format=confidence&min_confidence=0.5"),
                       additional_headers=key) as ws:
        await ws.send(to_png(rgb))
        message, body = (await _answers(ws, 0, binary=True))[0]
    confidence = np.asarray(Image.open(io.BytesIO(body)))
    assert np.array_equal(confidence, np.where(rgb[:, :, 0] < 0.5 * 255, 0, rgb[:, :, 0]))
    assert set(message["mean_confidence"]) <= set(message["class_fractions"])
    async with httpx.AsyncClient(base_url=tiny_server, headers=key, timeout=30) as client:
        r = await client.post("/segment?model=seg-confidence&format=confidence&min_confidence=0.5",
                              content=to_png(rgb))
    assert r.content == body
