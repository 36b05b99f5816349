"""The process's state beyond the models: draining (SIGTERM received), the drain's grace period
over, or a fatal fault that should stop the process (a model failed with exit_on_error on).

The HTTP server that runs the app (service/drain.py) sets these; the app reads them: readiness
turns 503 while draining, and InflightMiddleware answers 503 to what is left when the grace ends.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("service")


class Lifecycle:
    def __init__(self) -> None:
        self.draining_since: float | None = None  # time.monotonic() of the first SIGTERM
        self.grace_over = False
        self.fatal: str | None = None
        # set by the process runner: stop the server (exit code 3), e.g. DrainingServer.stop_fatally
        self.on_fatal: Callable[[str], None] | None = None
        self._on_grace_over: list[Callable[[], None]] = []

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def begin_drain(self) -> None:
        """Readiness turns 503 from now on (idempotent; safe from a signal handler: it only sets fields)."""
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    def end_grace(self) -> None:
        """The drain's grace period is over: whatever is still in flight is answered 503."""
        self.grace_over = True
        for callback in list(self._on_grace_over):
            callback()

    def when_grace_over(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the grace ends; returns the function that unregisters it."""
        self._on_grace_over.append(callback)
        return lambda: self._on_grace_over.remove(callback) if callback in self._on_grace_over else None

    def stop_fatally(self, reason: str) -> None:
        """A fault that should end the process (exit_on_error): the runner stops the server; in-process
        (no runner) the server stays unready with the reason."""
        self.fatal = reason
        if self.on_fatal is not None:
            self.on_fatal(reason)
        else:
            log.error("%s (exit_on_error: the server stays unready)", reason)
