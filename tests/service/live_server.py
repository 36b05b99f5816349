"""The real app under a real uvicorn (in a thread, on a loopback port), for tests that need a real
network client: the WebSocket stream."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

import httpx
import uvicorn

from enet_serve.service.app import create_app
from enet_serve.service.settings import Settings


@contextlib.contextmanager
def live_server(settings: Settings, ready_timeout: float = 120.0) -> Iterator[str]:
    """Serve `settings` on 127.0.0.1 until the block ends; yields the base URL once /health/ready is 200."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on",
                            ws_max_size=settings.stream_max_frame_bytes, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        with httpx.Client(base_url=base, timeout=10) as client:
            while True:
                assert thread.is_alive(), "the server stopped while starting"
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"not ready in {ready_timeout} s"
                time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
