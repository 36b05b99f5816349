"""Fixtures of the service suite: tiny repositories, the in-process app, real exported models."""
from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from enet_serve.service.app import create_app
from enet_serve.service.settings import Settings
from svc_helpers import CAMVID, FASHION, tiny_repository


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No ENET_SERVE_* variable of the developer's shell leaks into a test."""
    import os

    for key in list(os.environ):
        if key.startswith("ENET_SERVE_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return tiny_repository(tmp_path_factory.mktemp("tiny_repo"))


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID}")
    return CAMVID


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION}")
    return FASHION


async def wait_ready(client: httpx.AsyncClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await client.get("/health/ready")
        if r.status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not ready after {timeout} s: {r.text}")


@pytest.fixture
async def serve(tiny_repo):
    """`client = await serve(**settings)`: the real app in-process (lifespan run), behind httpx.ASGITransport."""
    async with contextlib.AsyncExitStack() as stack:

        async def _serve(*, ready: bool = True, **overrides) -> httpx.AsyncClient:
            overrides.setdefault("repository", tiny_repo)
            overrides.setdefault("max_batch_size", 4)
            overrides.setdefault("tune_batch_size", False)  # batch sizes as configured: deterministic tests
            settings = Settings(**overrides)
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                                       timeout=60)
            await stack.enter_async_context(client)
            client.app = app  # type: ignore[attr-defined]
            if ready:
                await wait_ready(client)
            return client

        yield _serve


@pytest.fixture(scope="session")
def real_repo(tmp_path_factory) -> Path:
    """enet (as enet-camvid) and lenet5 (as lenet5-fashion), random-init, exported by export.export_model."""
    from enet_serve.export import export_model  # the test extras install the exporter

    repo = tmp_path_factory.mktemp("real_repo")
    export_model("enet", repo, "enet-camvid", random_init=True, precisions=("fp32",), check=False)
    export_model("lenet5", repo, "lenet5-fashion", random_init=True, precisions=("fp32",), check=False)
    return repo
