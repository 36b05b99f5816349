"""The HTTP server process: uvicorn, with a drain that loses nothing on SIGTERM (or SIGINT).

1. At the signal, readiness turns 503 at once (Lifecycle.begin_drain): the orchestrator stops
   sending; in Kubernetes a preStop pause has already let the endpoints update before the signal.
2. The listeners close (no new connection is accepted); idle keep-alive connections are closed,
   busy ones close after their response.
3. Every request already accepted, running or queued in a batcher, is answered as usual, for up to
   `drain_timeout_s`.
4. Then whatever is still unanswered gets 503 `shutting_down` (InflightMiddleware), the models
   stop, and the process exits.

A model that fails with `exit_on_error` on after the start (at warm-up) stops the server the same
way, with exit code 3 (uvicorn's code for a failed start).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

import uvicorn

from enet_serve.service.lifecycle import Lifecycle

log = logging.getLogger("service")

ANSWER_S = 2.0  # after the grace: time for the 503s to go out before the remaining tasks are cancelled
FATAL_EXIT_CODE = 3


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_timeout_s: float):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_timeout_s = drain_timeout_s
        self.exit_code = 0
        lifecycle.on_fatal = self._stop_fatally

    def handle_exit(self, sig, frame) -> None:
        self.lifecycle.begin_drain()  # readiness is 503 from this instant, before the loop next ticks
        super().handle_exit(sig, frame)

    def _stop_fatally(self, reason: str) -> None:
        log.critical("%s; exit_on_error: stopping the server", reason)
        self.exit_code = FATAL_EXIT_CODE
        self.lifecycle.begin_drain()
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.lifecycle.begin_drain()
        started = time.monotonic()
        for server in self.servers:  # stop accepting
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle: closed now; busy: closed after its response
        log.info("draining: %d connection(s), %d request(s) in flight; grace %g s",
                 len(self.server_state.connections), len(self.server_state.tasks), self.drain_timeout_s)
        if not await self._wait_idle(self.drain_timeout_s):
            log.warning("draining: grace period of %g s over; answering 503 to the %d request(s) left",
                        self.drain_timeout_s, len(self.server_state.tasks))
            self.lifecycle.end_grace()
            if not await self._wait_idle(ANSWER_S):
                for task in self.server_state.tasks:
                    task.cancel(msg="drain: grace period over")
        else:
            log.info("draining: every request answered in %.2f s", time.monotonic() - started)
        for server in self.servers:
            server.close()
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _wait_idle(self, seconds: float) -> bool:
        """Wait until no connection is open and no request task runs; False when `seconds` pass first."""
        deadline = time.monotonic() + seconds
        while (self.server_state.connections or self.server_state.tasks) and not self.force_exit:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
