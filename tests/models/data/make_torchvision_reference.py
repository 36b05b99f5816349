"""Generate torchvision_reference.json: torchvision's own state_dict keys/shapes, parameter counts
and logits, for the tests of models/ (which must not import torchvision).

How the committed file was produced (torchvision is NOT installed anywhere; its wheel cannot be
installed beside torch 2.13.0, and only its pure-Python model code is needed):

    pip download torchvision==0.29.1 --no-deps -d /tmp/tv
    mkdir -p /tmp/tv/full && cd /tmp/tv/full && unzip -q /tmp/tv/torchvision-0.29.1-*.whl
    cd /work/main && .venv/bin/python tests/models/data/make_torchvision_reference.py /tmp/tv/full

The script registers an empty `torchvision` package whose __path__ is the unpacked wheel's
torchvision/ folder, so `torchvision.models` (plain Python) imports without running
torchvision/__init__.py, which would load the compiled ops (_C.so, built for another torch).
Nothing else is stubbed: the architectures are torchvision's unmodified classes and builders.

Contents:
- "state_dicts": for each torchvision-compatible architecture, {key: shape} of the model that
  torchvision's builder makes with default arguments (googlenet and inception_v3 with
  aux_logits=True, i.e. what torchvision's checkpoints contain), and its parameter count.
- "parity": for a few architectures, num_classes=10 models whose every state_dict entry is filled
  by `deterministic_state_dict` (a hash of the key name, no RNG) in eval mode, run on
  `deterministic_input`; the stored logits are torchvision's. The tests fill our models the
  same way and must reproduce them.
"""
from __future__ import annotations

import json
import math
import sys
import types
import zlib
from pathlib import Path

import torch

OUT = Path(__file__).with_name("torchvision_reference.json")

# torchvision builder name -> kwargs, for the key/shape dump (default architecture).
STATE_DICT_ARCHS: dict[str, dict] = {
    "alexnet": {},
    **{f"vgg{d}{bn}": {} for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "googlenet": {"aux_logits": True, "init_weights": False},
    "inception_v3": {"aux_logits": True, "init_weights": False},
    **{f"resnet{d}": {} for d in (18, 34, 50, 101, 152)},
    "squeezenet1_0": {},
    "squeezenet1_1": {},
    "mobilenet_v2": {},
}

# name -> (torchvision kwargs, input (h, w)); our builder takes the same kwargs minus aux_logits (ours has no
# aux heads: the checkpoint's aux weights are dropped by load_torchvision_state_dict).
PARITY_ARCHS: dict[str, tuple[dict, tuple[int, int]]] = {
    "alexnet": ({}, (64, 64)),
    "googlenet": ({"aux_logits": True, "transform_input": True, "init_weights": False}, (64, 64)),
    "inception_v3": ({"aux_logits": True, "transform_input": True, "init_weights": False}, (80, 80)),
    "resnet18": ({}, (64, 64)),
    "resnet50": ({}, (64, 64)),
    "squeezenet1_0": ({}, (64, 64)),
    "squeezenet1_1": ({}, (64, 64)),
    "mobilenet_v2": ({}, (64, 64)),
}
PARITY_CLASSES = 10
PARITY_BATCH = 2


_PERIOD = 65_521  # hash at most this many values per tensor, then tile (a prime: no two filters repeat)


def _uniform(n: int, seed: int) -> torch.Tensor:
    """n deterministic values in [-1, 1) from a sine hash (float64; no RNG, stable across versions)."""
    k = torch.arange(min(n, _PERIOD), dtype=torch.float64)
    v = torch.sin(k * 12.9898 + (seed % 100_003) * 78.233) * 43758.5453
    u = (v - torch.floor(v)) * 2 - 1
    return u.repeat(-(-n // _PERIOD))[:n] if n > _PERIOD else u


def deterministic_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A well-scaled state_dict for `shapes`, each tensor a function of its key name only."""
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        n = math.prod(shape)
        u = _uniform(n, zlib.crc32(key.encode())).reshape(shape)
        if key.endswith("running_var"):
            t = 1 + 0.5 * u.abs()
        elif key.endswith("weight") and len(shape) == 1:  # BatchNorm gamma
            t = 1 + 0.1 * u
        elif len(shape) == 1:  # biases, BatchNorm beta and running_mean
            t = 0.1 * u
        else:  # conv / linear weights: He-uniform in the fan-in
            t = u * math.sqrt(6 / (n // shape[0]))
        out[key] = t.to(torch.float32)
    return out


def deterministic_input(batch: int, size: tuple[int, int]) -> torch.Tensor:
    return _uniform(batch * 3 * size[0] * size[1], 12345).reshape(batch, 3, *size).to(torch.float32) * 2


def _import_torchvision_models(unpacked_wheel: str):
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = [str(Path(unpacked_wheel) / "torchvision")]
    sys.modules["torchvision"] = pkg
    import torchvision.models as tvm  # noqa: E402

    version = (Path(unpacked_wheel) / "torchvision" / "version.py").read_text()
    tv_version = version.split("__version__ = ")[1].split("\n")[0].strip("'\"")
    return tvm, tv_version


def main(unpacked_wheel: str) -> None:
    torch.set_num_threads(2)
    tvm, tv_version = _import_torchvision_models(unpacked_wheel)
    data: dict = {
        "torchvision": tv_version,
        "torch": torch.__version__,
        "generator": "tests/models/data/make_torchvision_reference.py (see its docstring)",
        "state_dicts": {},
        "parity": {"num_classes": PARITY_CLASSES, "batch": PARITY_BATCH, "models": {}},
    }
    for name, kwargs in STATE_DICT_ARCHS.items():
        with torch.device("meta"):
            model = getattr(tvm, name)(**kwargs)
        sd = model.state_dict()
        data["state_dicts"][name] = {
            "kwargs": kwargs,
            "num_params": sum(p.numel() for p in model.parameters()),
            "shapes": {k: list(v.shape) for k, v in sd.items()},
        }
        print(name, data["state_dicts"][name]["num_params"])
    for name, (kwargs, size) in PARITY_ARCHS.items():
        model = getattr(tvm, name)(num_classes=PARITY_CLASSES, **kwargs).eval()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(deterministic_state_dict(shapes), strict=True)
        with torch.no_grad():
            logits = model(deterministic_input(PARITY_BATCH, size))
        data["parity"]["models"][name] = {
            "kwargs": kwargs,
            "input_size": list(size),
            "shapes": shapes,
            "logits": [[float(f"{v:.7g}") for v in row] for row in logits.tolist()],
        }
        print(name, logits[0, :4].tolist())
    OUT.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tv/full")
