"""Weights for an export: a torchvision `.pth` (a bare state_dict), one of this project's checkpoints
(`{"arch", "num_classes", "model": state_dict, "metrics"?, "training"?, ...}`, shipped weights and
training checkpoints alike), or none (random init).

Every problem is a `WeightsError` with one line that names the file and what is wrong: no such
file, not a PyTorch file, not a state_dict, a checkpoint of another architecture, or the first
missing / unexpected / wrongly shaped keys.
"""
from __future__ import annotations

import dataclasses
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from enet_serve.export.errors import WeightsError
from enet_serve.model_config import sha256_file

# Auxiliary classifier heads of torchvision's googlenet / inception_v3 checkpoints: training-only,
# dropped when the model is built without them.
AUX_HEAD_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
# Keys listed per kind in an error message.
MAX_KEYS_SHOWN = 3


@dataclasses.dataclass
class Weights:
    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    kind: str  # "checkpoint" or "state_dict"
    num_classes: int | None = None  # from a checkpoint
    arch: str | None = None  # from a checkpoint
    metrics: dict | None = None
    training: dict | None = None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_weights(path: Path) -> Weights:
    """Read a weights file (without building a model): its state_dict and, for checkpoints, what they say."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file")
    try:
        # weights_only: a weights file is data; nothing in it is run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # notes on pickle protocols of odd files
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({reason[:200]})") from None
    digest = sha256_file(path)
    if isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):
        return Weights(path=path, sha256=digest, state_dict=dict(obj["model"]), kind="checkpoint",
                       num_classes=obj.get("num_classes"), arch=obj.get("arch"),
                       metrics=obj.get("metrics"), training=obj.get("training"))
    if isinstance(obj, Mapping) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        return Weights(path=path, sha256=digest, state_dict=dict(obj["state_dict"]), kind="checkpoint",
                       num_classes=obj.get("num_classes"), arch=obj.get("arch"))
    if _is_state_dict(obj):
        return Weights(path=path, sha256=digest, state_dict=dict(obj), kind="state_dict")
    what = type(obj).__name__ if not isinstance(obj, Mapping) else f"a dict with keys {', '.join(map(str, list(obj)[:5]))}"
    raise WeightsError(f"{path}: holds {what}, not a state_dict or a checkpoint with a 'model' state_dict")


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    return shown + (f" (+{len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else "")


def load_into(model: nn.Module, weights: Weights, arch: str) -> list[str]:
    """Load `weights` into `model` strictly; a mismatch is a WeightsError naming the first keys. Returns
    the auxiliary-head keys it dropped (torchvision's GoogLeNet / Inception v3 files carry them)."""
    if weights.arch is not None and weights.arch != arch:
        raise WeightsError(f"{weights.path}: a checkpoint of {weights.arch!r}, not of {arch!r}")
    state = _strip_prefix(weights.state_dict, "module.")  # saved from DataParallel
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    # torchvision's googlenet / inception_v3 files carry the training-only auxiliary heads.
    dropped = [k for k in unexpected if k.startswith(AUX_HEAD_PREFIXES)]
    if dropped:
        state = {k: v for k, v in state.items() if k not in dropped}
        unexpected = [k for k in unexpected if k not in dropped]
    # Old checkpoints lack BatchNorm's counter; it does not change the outputs.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_listing(shapes)}")
    if problems:
        raise WeightsError(f"{weights.path}: does not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return dropped
