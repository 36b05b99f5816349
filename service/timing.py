"""Where one request's time went, as its `Server-Timing` response header (W3C Server Timing):
`decode;dur=2.10, queue;dur=0.05, infer;dur=25.31, encode;dur=1.20, total;dur=29.02` (milliseconds).

Browsers show the header in their network panel and the demo page prints it next to the round trip,
so a slow answer says whether the time went to the network, the queue or the model.

`ServerTimingMiddleware` opens a `RequestTimings` per HTTP request in a context variable; the code on
the request's path records into it (`record`, `span`): the server the decode and the encode, the
batcher the queue wait and the inference of the request's own item. Outside a request, nothing is
recorded. Spans of rows that run concurrently (a v2 batch) keep the longest, not the sum. Each phase
is also kept as an interval (start and end), for the trace spans of service/tracing.py.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

HEADER = b"server-timing"
# the order of the header's entries; names outside it follow in the order they were recorded
ORDER = ("decode", "queue", "infer", "encode")


class RequestTimings:
    __slots__ = ("spans", "intervals")

    def __init__(self) -> None:
        self.spans: dict[str, float] = {}
        self.intervals: list[tuple[str, float, float]] = []  # (name, start, end) in perf_counter seconds

    def add(self, name: str, seconds: float) -> None:
        """`seconds` more of `name`, which ended just now."""
        self.spans[name] = self.spans.get(name, 0.0) + seconds
        self._interval(name, seconds, None)

    def longest(self, name: str, seconds: float, end: float | None = None) -> None:
        self.spans[name] = max(self.spans.get(name, 0.0), seconds)
        self._interval(name, seconds, end)

    def _interval(self, name: str, seconds: float, end: float | None) -> None:
        end = time.perf_counter() if end is None else end
        self.intervals.append((name, end - seconds, end))

    def header(self, total_s: float) -> bytes:
        names = [n for n in ORDER if n in self.spans] + [n for n in self.spans if n not in ORDER]
        parts = [f"{n};dur={self.spans[n] * 1000:.2f}" for n in names]
        parts.append(f"total;dur={total_s * 1000:.2f}")
        return ", ".join(parts).encode("ascii")


_current: ContextVar[RequestTimings | None] = ContextVar("enet_serve_request_timings", default=None)


def record(name: str, seconds: float) -> None:
    """Add `seconds` to the current request's span `name` (nothing outside a request)."""
    timings = _current.get()
    if timings is not None:
        timings.add(name, seconds)


def current() -> RequestTimings | None:
    """The current request's timings (None outside a request)."""
    return _current.get()


def record_batch(queue_s: float, infer_s: float) -> None:
    """The batcher's part of the current request, just answered: its item's queue wait, then its batch's
    inference, which ended about now."""
    timings = _current.get()
    if timings is not None:
        now = time.perf_counter()
        timings.longest("queue", queue_s, end=now - infer_s)
        timings.longest("infer", infer_s, end=now)


@contextmanager
def span(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record(name, time.perf_counter() - t0)


class ServerTimingMiddleware:
    """Records each HTTP request's timings (pure ASGI: the route runs in this context) and, with
    `header` (setting `server_timing`), adds them to the response as `Server-Timing`."""

    def __init__(self, app, header: bool = True):
        self.app = app
        self.header = header

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        timings = RequestTimings()
        token = _current.set(timings)

        async def send_with_header(message):
            if message["type"] == "http.response.start" and self.header:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                headers.append((HEADER, timings.header(time.perf_counter() - start)))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            _current.reset(token)
