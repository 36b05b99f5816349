"""Execution-provider planning: which providers, options, ONNX file and TensorRT profile to ask
onnxruntime for, and whether the session it made is the one that was asked for.

Pure planning, no onnxruntime import: service/runtime.py creates the sessions and walks the chain.

- `device=auto` is a chain, TensorRT -> CUDA -> CPU (the providers that onnxruntime lists): each plan
  that fails to build, or builds onto other providers than it asked for, is logged in one line and
  the next one serves the model. An explicit `tensorrt` or `cuda` is a chain of one: it fails loudly.
- The onnxruntime-gpu wheel lists TensorRT (and CUDA) as available without their libraries, then
  quietly makes a session on the next provider; `mismatch` compares what a session reports
  (`get_providers()`) with what its plan asked for.
- The TensorRT engine cache is keyed by what decides the engine: the ONNX file's sha256, the
  precision, the optimisation profile and the onnxruntime version (its engine id hashes node names,
  not weights, so a re-exported model with the same topology would otherwise reuse a stale engine).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TRT, CUDA)
PROVIDER_OF = {"tensorrt": TRT, "cuda": CUDA, "cpu": CPU}
DEVICE_OF = {v: k for k, v in PROVIDER_OF.items()}
CHAIN = ("tensorrt", "cuda", "cpu")


class PlanError(RuntimeError):
    """A plan that cannot be made (no such file, provider not available); names the model and the reason."""


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimisation profile of the input: min/opt/max NHWC shapes."""

    input_name: str
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def _dims(self, shape: tuple[int, ...]) -> str:
        return f"{self.input_name}:" + "x".join(str(d) for d in shape)

    def trt_options(self) -> dict[str, str]:
        return {"trt_profile_min_shapes": self._dims(self.min), "trt_profile_opt_shapes": self._dims(self.opt),
                "trt_profile_max_shapes": self._dims(self.max)}

    @property
    def key(self) -> str:
        """A short, filesystem-safe name of the profile (part of the engine cache key)."""
        text = "|".join(self._dims(s) for s in (self.min, self.opt, self.max))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass
class Plan:
    """What to ask onnxruntime for: the providers (with options), the file, the precision meant."""

    device: str  # "tensorrt" | "cuda" | "cpu"
    file_key: str  # which ONNX file of config.json: "fp32" | "fp32_gpu" | "fp16" | "int8"
    precision: str  # the compute precision meant: "fp32" | "fp16" | "int8"
    providers: list = field(default_factory=list)  # [(name, options), ...]
    profile: Profile | None = None  # TensorRT only
    cache_dir: Path | None = None  # TensorRT only: the engine cache of this file, precision and profile
    cudnn_conv_algo_search: str | None = None  # GPU plans only

    @property
    def provider(self) -> str:
        return self.providers[0][0]

    @property
    def on_gpu(self) -> bool:
        return self.device in ("tensorrt", "cuda")


def chain(device: str, available: Sequence[str]) -> list[str]:
    """The devices to try in order: under `auto` those of TensorRT, CUDA, CPU that onnxruntime lists;
    an explicit device alone (PlanError when onnxruntime does not even list it)."""
    if device == "auto":
        return [d for d in CHAIN if PROVIDER_OF[d] in available or d == "cpu"]
    if PROVIDER_OF[device] not in available:
        raise PlanError(f"device={device} but onnxruntime has no {PROVIDER_OF[device]} (available: "
                        f"{', '.join(available)}); install enet-serve[gpu] (onnxruntime-gpu) or use device=auto/cpu")
    return [device]


def mismatch(plan: Plan, got: Sequence[str]) -> str | None:
    """Why a session reporting providers `got` is not what `plan` asked for (None when it is)."""
    if not got:
        return "the session reports no providers"
    if got[0] != plan.provider:
        return f"asked for {plan.provider}, the session runs on {', '.join(got)}"
    return None


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An exception (onnxruntime's are screens long) as one log line: its type and first words."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    h, sep, w = text.lower().partition("x")
    if not sep or not h.strip().isdigit() or not w.strip().isdigit() or int(h) < 1 or int(w) < 1:
        raise ValueError(f"expected HEIGHTxWIDTH (e.g. 1080x1920), got {text!r}")
    return int(h), int(w)


def tensorrt_profile(input_name: str, native: tuple[int, int, int], max_batch: int, *, dynamic: bool,
                     size_multiple: int, varying: bool, min_size: tuple[int, int],
                     max_size: tuple[int, int]) -> Profile:
    """The profile of a model's input: batch 1..max_batch; sides fixed at the native size unless the
    model takes any size and the service sends varying sizes (`varying`: native_size on), then from
    `min_size` to `max_size` (rounded to the size multiple; the native size always inside)."""
    h, w, c = native
    if not (dynamic and varying):
        return Profile(input_name, (1, h, w, c), (max_batch, h, w, c), (max_batch, h, w, c))
    m = size_multiple

    def up(v: int) -> int:
        return -(-v // m) * m

    lo_h, lo_w = min(up(min_size[0]), h), min(up(min_size[1]), w)
    hi_h, hi_w = max(max_size[0] // m * m, h), max(max_size[1] // m * m, w)
    return Profile(input_name, (1, lo_h, lo_w, c), (max_batch, h, w, c), (max_batch, hi_h, hi_w, c))


def engine_cache_dir(root: Path, model: str, sha256: str, precision: str, profile: Profile, ort_version: str) -> Path:
    """`<root>/<model>/<sha256[:16]>-<precision>-p<profile>-ort<version>`: a new file, precision,
    profile or onnxruntime gets a new engine; the old directories can be deleted at any time."""
    return Path(root) / model / f"{sha256[:16]}-{precision}-p{profile.key}-ort{ort_version}"


def gpu_file_key(files: Sequence[str], precision: str, device: str) -> str:
    """The ONNX file of a GPU plan: TensorRT builds its FP16 engine itself from an FP32 graph; FP32
    plans prefer the graph exported for GPUs (`fp32_gpu`, without the CPU-only rewrites)."""
    fp32 = "fp32_gpu" if "fp32_gpu" in files else "fp32"
    if device == "tensorrt":
        return fp32 if fp32 in files else "fp16"
    return fp32 if precision == "fp32" else "fp16"


def cudnn_search(setting: str, varying_shapes: bool) -> str:
    """cuDNN's convolution algorithm search: EXHAUSTIVE benchmarks every algorithm once per input
    shape, which pays off only when the shapes are fixed; with varying shapes (native_size) it would
    run inside requests, so HEURISTIC."""
    if setting != "auto":
        return setting
    return "HEURISTIC" if varying_shapes else "EXHAUSTIVE"


def cuda_options(search: str, device_id: int = 0) -> dict[str, Any]:
    return {"device_id": device_id, "cudnn_conv_algo_search": search, "do_copy_in_default_stream": True,
            "cudnn_conv_use_max_workspace": "1"}


def trt_options(precision: str, cache_dir: Path, timing_cache_dir: Path, profile: Profile,
                workspace_bytes: int, device_id: int = 0) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        # The timing cache holds per-layer timings of this GPU, not weights: one for every model.
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing_cache_dir),
        "trt_max_workspace_size": workspace_bytes,
        **profile.trt_options(),
    }


# -- which TensorRT an onnxruntime-gpu build needs ------------------------------------------------------
# Stdlib only, so the Dockerfile runs this file as a script before the package is installed:
#   python service/providers.py tensorrt-requirement auto   ->   tensorrt-cu13-libs==10.*

def linked_major(library: Path, soname: str) -> int | None:
    """The major version of `soname` (e.g. "libnvinfer") that a shared library names in its dependencies."""
    import re

    try:
        data = library.read_bytes()
    except OSError:
        return None
    found = re.search(re.escape(soname).encode() + rb"\.so\.(\d+)", data)
    return int(found.group(1)) if found else None


def onnxruntime_capi_dir() -> Path | None:
    """onnxruntime's capi/ folder (holding the provider libraries), found without importing onnxruntime."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "capi"


def tensorrt_requirement(major: str = "auto", capi: Path | None = None) -> str:
    """The pip requirement of TensorRT's libraries for the installed onnxruntime-gpu: the major version
    its TensorRT provider links against ("auto") or the one given, for the CUDA major its CUDA provider
    links against."""
    capi = capi or onnxruntime_capi_dir()
    if capi is None:
        raise PlanError("onnxruntime is not installed")
    cuda = linked_major(capi / "libonnxruntime_providers_cuda.so", "libcudart")
    if cuda is None:
        raise PlanError(f"{capi}: no CUDA provider library naming libcudart (is this onnxruntime-gpu?)")
    if major == "auto":
        found = linked_major(capi / "libonnxruntime_providers_tensorrt.so", "libnvinfer")
        if found is None:
            raise PlanError(f"{capi}: no TensorRT provider library naming libnvinfer")
        major = str(found)
    if not major.isdigit():
        raise PlanError(f"TensorRT major version must be 'auto' or a number, not {major!r}")
    return f"tensorrt-cu{cuda}-libs=={major}.*"


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (2, 3) or sys.argv[1] != "tensorrt-requirement":
        sys.exit("usage: python providers.py tensorrt-requirement [auto|MAJOR]")
    try:
        print(tensorrt_requirement(sys.argv[2] if len(sys.argv) == 3 else "auto"))
    except PlanError as e:
        sys.exit(f"tensorrt-requirement: {e}")
