"""The peers by name: how each is started, and the virtual environment the heavy ones run from."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from enet_serve.paths import REPO_ROOT, RUNS_DIR

ENVS_DIR = RUNS_DIR / "peers"


@dataclass(frozen=True)
class Peer:
    name: str
    module: str
    requirements: tuple[str, ...] = ()  # empty: runs in the project's own environment
    ready_timeout_s: float = 180.0

    @property
    def env(self) -> Path | None:
        return ENVS_DIR / self.name if self.requirements else None

    def python(self) -> Path | None:
        """The interpreter to run it with; None while its environment is not created."""
        if self.env is None:
            return Path(sys.executable)
        python = self.env / "bin" / "python"
        return python if (self.env / ".installed").is_file() else None

    def create_env(self) -> Path:
        """Create its environment (pip install of its requirements and of enet-serve from this checkout)."""
        assert self.env is not None
        if not (self.env / "bin" / "python").is_file():
            subprocess.run([sys.executable, "-m", "venv", str(self.env)], check=True)
        pip = [str(self.env / "bin" / "python"), "-m", "pip", "install", "-q"]
        print(f"installing {', '.join(self.requirements)} into {self.env} ...", flush=True)
        subprocess.run([*pip, *self.requirements, "-e", str(REPO_ROOT)], check=True)
        (self.env / ".installed").write_text(" ".join(self.requirements) + "\n")
        return self.env / "bin" / "python"

    def command(self, port: int, model_dir: Path, precision: str = "fp32", threads: int = 0) -> list[str]:
        python = self.python()
        if python is None:
            raise RuntimeError(f"peer {self.name}: no environment at {self.env} (bench peers --setup creates it)")
        return [str(python), "-m", self.module, "--port", str(port), "--model", str(model_dir),
                "--precision", precision, "--threads", str(threads)]


PEERS = {p.name: p for p in (
    Peer("fastapi", "enet_serve.bench.peers.fastapi_peer"),
    Peer("litserve", "enet_serve.bench.peers.litserve_peer", ("litserve",)),
    Peer("ray", "enet_serve.bench.peers.ray_peer", ("ray[serve]",), ready_timeout_s=300.0),
)}
