"""What the training loops share: device and threads, seeding, input normalisation."""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from enet_serve.models.registry import ModelSpec


def pick_device(requested: str = "auto", threads: int | None = None) -> torch.device:
    """CUDA when present (or asked for), else the CPU with `threads` (default: all cores) intra-op threads."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    elif not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} asked for, but torch sees no CUDA device")
    return torch.device(requested)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU {_cpu_model()}, {threads} thread{'' if threads == 1 else 's'}"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random generator the loops use, so that --resume continues the same sequence."""
    # NumPy's key as a tensor: checkpoints stay loadable with torch.load(weights_only=True), as export reads them.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"rng": torch.get_rng_state(), "py_rng": random.getstate(),
             "np_rng": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_initialized():  # dropout on the GPU draws from CUDA's generators
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda_rng"]):
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if "py_rng" in state:
        random.setstate(state["py_rng"])
        name, keys, pos, has_gauss, cached = state["np_rng"]
        np.random.set_state((name, np.asarray(keys).astype(np.uint32), pos, has_gauss, cached))


class Normalize(torch.nn.Module):
    """uint8 NCHW -> float, scaled to 0..1 and normalised with the spec's mean/std: what the ONNX graph does in-graph."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


def to_native_size(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, H, W), bilinear with antialiasing, as the service's resize does.
    The one resize of training, evaluation and the export's parity inputs."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", align_corners=False,
                                          antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def torch_predictor(model: torch.nn.Module, normalize: Normalize, device: torch.device):
    """predict(uint8 NCHW) -> class indices (argmax over dim 1: classes, or classes per pixel)."""

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        model.eval()
        return model(normalize(images.to(device))).argmax(1).cpu()

    return predict
