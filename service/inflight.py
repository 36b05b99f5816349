"""Every HTTP request in flight, run as a task of its own so that it can be cut short (pure ASGI):

- past `max_connections` requests served at once: 503 `too_many_connections` with Retry-After
  (the probes and /metrics are not counted, so an overloaded server still answers its orchestrator);
- a body that has not arrived in full within `body_timeout_s` of the request's start: 408. The body
  is read on the event loop, so a client trickling one byte a second holds no decode thread;
- a client that disconnects, before its body is in or after: the request is cancelled, so an item
  still queued in the batcher is never run (Batcher.submit drops it) and nothing is encoded for nobody;
- the drain's grace period ends (Lifecycle.end_grace): every request that has not started its
  response is cancelled and answered 503 `shutting_down`.
"""
from __future__ import annotations

import asyncio
import json
import logging

from enet_serve.service.errors import BodyTimeout, error_body
from enet_serve.service.lifecycle import Lifecycle
from enet_serve.service.settings import Settings

log = logging.getLogger("service")

UNCOUNTED = ("/health/", "/v2/health/", "/metrics")  # probes and scrapes: never refused, never counted
CLIENT_GONE = "enet_serve.client_gone"  # scope key: the request was cut because its client disconnected


class _Flight:
    __slots__ = ("task", "started", "cut")

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.started = False  # the response has started: it is the app's to finish
        self.cut: str | None = None  # why we cancelled it: "client" or "grace"


async def send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class InflightMiddleware:
    def __init__(self, app, settings: Settings, lifecycle: Lifecycle):
        self.app = app
        self.max_connections = settings.max_connections
        self.body_timeout_s = settings.body_timeout_s
        self.lifecycle = lifecycle
        self.flights: set[_Flight] = set()
        self.counted = 0
        lifecycle.when_grace_over(self._grace_over)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = not scope["path"].startswith(UNCOUNTED)
        if counted and self.counted >= self.max_connections:
            await send_json(send, 503, error_body(
                "too_many_connections", f"{self.counted} requests are being served (max_connections="
                f"{self.max_connections}); retry shortly", path=scope["path"]), {"Retry-After": "1"})
            return
        if self.lifecycle.grace_over:
            await send_json(send, 503, error_body("shutting_down", "the server is shutting down", path=scope["path"]),
                            {"Retry-After": "1", "Connection": "close"})
            return
        if counted:
            self.counted += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            if counted:
                self.counted -= 1

    async def _serve(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        flight = _Flight()
        deadline = loop.time() + self.body_timeout_s
        body_done = False
        gone = False
        watcher: asyncio.Task | None = None

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            if not flight.started and flight.task is not None and not flight.task.done():
                flight.cut = "client"
                flight.task.cancel()

        async def guarded_receive():
            nonlocal body_done, gone, watcher
            if gone:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except (asyncio.TimeoutError, TimeoutError):
                raise BodyTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s "
                                  "(body_timeout_s)", headers={"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                gone = True
                # gone before its body was in: cut short like a disconnect after it (nothing to answer,
                # counted 499), not left to surface as the framework's ClientDisconnect, a 500
                flight.cut = "client"
                raise asyncio.CancelledError
            elif not message.get("more_body", False):
                body_done = True
                watcher = loop.create_task(watch_disconnect(), name="watch-disconnect")
            return message

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                flight.started = True
            await send(message)

        flight.task = loop.create_task(self.app(scope, guarded_receive, tracked_send))
        self.flights.add(flight)
        try:
            await flight.task
        except asyncio.CancelledError:
            if flight.cut is None or not flight.task.cancelled():
                raise  # cancelled from outside (the server gave up on it): not ours to answer
            if flight.cut == "client":
                scope[CLIENT_GONE] = True
                log.info("%s %s: the client disconnected; the request was dropped", scope["method"], scope["path"])
            elif not flight.started:
                await send_json(send, 503, error_body(
                    "shutting_down", "the server is shutting down: the drain's grace period ended before this "
                    "request was answered", path=scope["path"]), {"Retry-After": "1", "Connection": "close"})
        finally:
            self.flights.discard(flight)
            if watcher is not None:
                watcher.cancel()

    def _grace_over(self) -> None:
        for flight in list(self.flights):
            if not flight.started and flight.task is not None and not flight.task.done():
                flight.cut = "grace"
                flight.task.cancel()
