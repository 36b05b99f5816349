"""The peers answer as the service does: the same mask PNG for the same JPEG (each installable peer;
LitServe and Ray Serve only where `enet-serve bench peers --setup` created their environments), and a
short drive of the harness's load client against one."""
from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from enet_serve.bench import harness
from enet_serve.bench.load import drive, load_frames, to_jpeg
from enet_serve.bench.peers.registry import PEERS
from enet_serve.paths import DEFAULT_CAMVID, DEFAULT_REPOSITORY

MODEL = DEFAULT_REPOSITORY / "enet-camvid"
pytestmark = pytest.mark.skipif(not (DEFAULT_CAMVID / "val").is_dir(), reason="CamVid val is not installed")


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [to_jpeg(f, 90) for f in load_frames(DEFAULT_CAMVID / "val", 2)]


def masks(url: str, jpegs: list[bytes]) -> list[np.ndarray]:
    out = []
    for body in jpegs:
        r = httpx.post(url + "/segment?format=png", content=body, headers={"Content-Type": "image/jpeg"}, timeout=120)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        out.append(np.asarray(Image.open(io.BytesIO(r.content))))
    return out


@pytest.fixture(scope="module")
def service_masks(jpegs) -> list[np.ndarray]:
    port = harness.free_port()
    cmd = harness.service_command(port, DEFAULT_REPOSITORY, ["enet-camvid"],
                                  ["--max-batch-size", "1", "--instances", "1", "--no-solo-instance"])
    with harness.Server("service", cmd, port, timeout_s=120) as srv:
        return masks(srv.url, jpegs)


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_gives_the_service_masks(name, jpegs, service_masks):
    peer = PEERS[name]
    if peer.python() is None:
        pytest.skip(f"{name}: no environment at {peer.env} (enet-serve bench peers --setup)")
    port = harness.free_port()
    with harness.Server(name, peer.command(port, MODEL.resolve(), threads=1), port,
                        timeout_s=peer.ready_timeout_s) as srv:
        got = masks(srv.url, jpegs)
    for g, want in zip(got, service_masks):
        assert g.shape == want.shape == (360, 480)
        assert np.array_equal(g, want)


def test_load_client_drives_a_peer_and_the_server_stops(jpegs):
    peer = PEERS["fastapi"]
    port = harness.free_port()
    srv = harness.Server("fastapi", peer.command(port, MODEL.resolve(), threads=1), port, timeout_s=60)
    with srv:
        pid = srv.proc.pid
        assert harness.rss_mib(pid) > 10
        r = asyncio.run(drive(srv.url, jpegs, 2, 1.0, 0.2, "png", {}))
    assert r["requests"] >= 1 and r["errors"] == {} and r["median_ms"] > 0
    assert srv.proc.poll() is not None  # stopped with its process group
