"""The demo page's routes, the offline docs and the Server-Timing header, in-process (the browser test
drives the same page in Chromium)."""
from __future__ import annotations

import asyncio
import re

import numpy as np

from enet_serve.service import timing
from enet_serve.service.api import docs, ui
from svc_helpers import to_jpeg

TIMING = re.compile(r"^(\w+);dur=(\d+\.\d\d)$")


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for entry in header.split(", "):
        m = TIMING.match(entry)
        assert m, f"malformed Server-Timing entry {entry!r} in {header!r}"
        out[m.group(1)] = float(m.group(2))
    return out


async def test_page_config_and_files(serve):
    client = await serve()
    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
        assert (await client.get(asset)).status_code == 200, asset
    assert "https://" not in r.text and "http://" not in r.text

    config = (await client.get("/ui/config")).json()
    assert config["api_key_required"] is False and config["stream"] == "/segment/stream"
    assert {s["task"] for s in config["samples"]} == {"segment", "classify"}
    for sample in config["samples"]:
        r = await client.get(sample["url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), sample


async def test_page_needs_no_key_but_the_api_does(serve):
    client = await serve(api_keys=["k1"])
    assert (await client.get("/")).status_code == 200
    assert (await client.get("/ui/config")).json()["api_key_required"] is True
    assert (await client.get("/models")).status_code == 401
    assert (await client.get("/models", headers={"X-API-Key": "k1"})).status_code == 200


async def test_demo_page_off(serve):
    client = await serve(demo_page=False)
    assert (await client.get("/")).status_code == 404
    assert (await client.get("/ui/config")).status_code == 404
    assert (await client.get("/docs")).status_code == 200


async def test_docs_use_installed_assets_only(serve):
    client = await serve()
    for path in (docs.DOCS_URL, docs.REDOC_URL):
        r = await client.get(path)
        assert r.status_code == 200
        assert "cdn." not in r.text and "fonts.googleapis" not in r.text, path
        assert "default-src 'self'" in r.headers["content-security-policy"]
        urls = re.findall(r'(?:src|href)="([^"]+)"', r.text) + re.findall(r"url: '([^']+)'", r.text)
        assert urls and all(u.startswith("/") for u in urls), urls
        for url in urls:
            assert (await client.get(url)).status_code == 200, url
    assert {"/segment", "/classify"} <= set((await client.get("/openapi.json")).json()["paths"])
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]


async def test_sample_list_names_only_bundled_files():
    for sample in ui.samples():
        assert (ui.SAMPLES_DIR / sample["file"]).is_file()
        assert sample["url"] == f"/static/samples/{sample['file']}"


# -- Server-Timing ------------------------------------------------------------------------------------------

async def test_server_timing_of_a_segmentation(serve):
    client = await serve()
    r = await client.post("/segment?format=png", content=to_jpeg(np.full((120, 160, 3), 90, np.uint8)),
                          headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200
    spans = server_timing(r.headers["server-timing"])
    assert list(spans) == ["decode", "queue", "infer", "encode", "total"]
    assert all(v >= 0 for v in spans.values())
    assert spans["infer"] > 0 and spans["decode"] > 0
    assert spans["decode"] + spans["queue"] + spans["infer"] + spans["encode"] <= spans["total"] + 0.05


async def test_server_timing_everywhere_and_off(serve):
    client = await serve()
    for path in ("/health/live", "/models", "/nope"):
        assert list(server_timing((await client.get(path)).headers["server-timing"])) == ["total"], path
    r = await client.post("/segment", content=b"not an image", headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "total;dur=" in r.headers["server-timing"]
    client = await serve(server_timing=False)
    assert "server-timing" not in (await client.get("/health/live")).headers


async def test_server_timing_of_a_v2_batch_keeps_the_longest_row(serve):
    client = await serve()
    x = np.zeros((3, 120, 160, 3), np.uint8)
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = await client.post("/v2/models/enet-camvid/infer", json=body)
    assert r.status_code == 200, r.text
    spans = server_timing(r.headers["server-timing"])
    assert spans["infer"] <= spans["total"] and spans["queue"] <= spans["total"]


def test_request_timings_header_order_and_units():
    t = timing.RequestTimings()
    t.add("encode", 0.001)
    t.add("decode", 0.002)
    t.add("decode", 0.001)
    t.longest("infer", 0.010)
    t.longest("infer", 0.004)
    t.add("extra", 0.0005)
    assert t.header(0.02) == b"decode;dur=3.00, infer;dur=10.00, encode;dur=1.00, extra;dur=0.50, total;dur=20.00"


def test_recording_outside_a_request_does_nothing():
    timing.record("decode", 1.0)
    timing.record_batch(1.0, 1.0)
    with timing.span("encode"):
        pass
    assert timing._current.get() is None


async def test_concurrent_requests_keep_their_own_timings(serve):
    """Each request's header holds its own spans: the context variable does not leak between requests."""
    client = await serve(max_batch_size=4, max_delay_ms=20)
    images = [to_jpeg(np.full((120 + 8 * i, 160, 3), 40 * i, np.uint8)) for i in range(4)]
    rs = await asyncio.gather(*(client.post("/segment?format=png", content=im, headers={"Content-Type": "image/jpeg"})
                                for im in images))
    for r in rs:
        spans = server_timing(r.headers["server-timing"])
        assert r.status_code == 200 and set(spans) == {"decode", "queue", "infer", "encode", "total"}
