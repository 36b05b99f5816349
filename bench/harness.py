"""Servers the benchmarks start and stop: the service or a peer, one process on a loopback port.

`Server` starts a command, waits until a readiness URL answers 200, and stops the process (and any
processes it started, by their process group) at the end. `memory` reads a process tree's resident
memory from /proc (Linux).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from enet_serve.paths import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_command(port: int, repository: Path, models: list[str], extra: list[str] = ()) -> list[str]:
    """`python -m enet_serve.service` on 127.0.0.1:`port` with quiet logs, serving `models`."""
    return [sys.executable, "-m", "enet_serve.service", "--host", "127.0.0.1", "--port", str(port),
            "--repository", str(repository), "--models", ",".join(models), "--no-access-log",
            "--log-level", "warning", *extra]


class Server:
    """A server process on loopback: started by `start()` (waits for `ready_path` to answer 200), stopped by `stop()`."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str = "/health/ready",
                 env: dict[str, str] | None = None, timeout_s: float = 300.0):
        self.name, self.cmd, self.port, self.ready_path = name, cmd, port, ready_path
        self.env = {**os.environ, **(env or {})}
        self.timeout_s = timeout_s
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        import httpx

        print(f"starting {self.name}:", " ".join(self.cmd), flush=True)
        # Its own process group, so stop() also ends what it starts (uvicorn workers, Ray's processes).
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode} before it was ready")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.name} was not ready in {self.timeout_s:.0f} s")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        try:  # anything of the group still alive (Ray's helpers outlive their parent)
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of one process, MiB."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    """The process's resident high-water mark (VmHWM) since it started or since `reset_peak`, MiB."""
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (`echo 5 > /proc/PID/clear_refs`); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False
