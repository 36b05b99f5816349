"""onnxruntime sessions: execution providers, precision, IO binding and warm-up.

`device="auto"` tries TensorRT (FP16, engine cache), then CUDA (the FP16 graph), then the CPU (the
FP32 graph). The onnxruntime-gpu wheel lists CUDA and TensorRT as *available* on machines without a
GPU and then silently falls back to the CPU, so what `/models` reports is read back from the
session (`get_providers()`), and an `auto` plan that landed on the CPU is rebuilt with the FP32 file.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from enet_serve.service.errors import ModelLoadError
from enet_serve.service.repository import ModelEntry
from enet_serve.service.settings import Settings

log = logging.getLogger("enet_serve.service.runtime")

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TRT, CUDA)
SHORT = {TRT: "tensorrt", CUDA: "cuda", CPU: "cpu"}
ORT_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}  # config.json dtype -> onnxruntime's


@dataclass
class Plan:
    """What to ask onnxruntime for: the providers (with options), the file, the precision meant."""

    device: str  # "tensorrt" | "cuda" | "cpu"
    file_precision: str  # which ONNX file: "fp32" | "fp16"
    precision: str  # the compute precision meant: "fp32" | "fp16"
    providers: list = field(default_factory=list)  # [(name, options), ...]


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def resolve_device(device: str, available: Sequence[str]) -> str:
    if device == "auto":
        if TRT in available:
            return "tensorrt"
        if CUDA in available:
            return "cuda"
        return "cpu"
    needed = {"tensorrt": TRT, "cuda": CUDA}.get(device)
    if needed and needed not in available:
        raise ModelLoadError(f"device={device} but onnxruntime has no {needed} (available: {', '.join(available)}); "
                             "install onnxruntime-gpu or use device=auto/cpu")
    return device


def make_plan(entry: ModelEntry, settings: Settings, device: str, *, input_shape: tuple[int, ...] | None = None) -> Plan:
    """The providers and file for `device` ("tensorrt", "cuda" or "cpu") under `settings.precision`."""
    gpu = device in ("tensorrt", "cuda")
    precision = settings.precision if settings.precision != "auto" else ("fp16" if gpu else "fp32")
    files = entry.config.files
    if device == "tensorrt":
        # TensorRT builds its own FP16 engine from the FP32 graph (trt_fp16_enable); the FP16 graph
        # is only a fallback when the repository has no FP32 file.
        file_precision = "fp32" if "fp32" in files else "fp16"
    else:
        file_precision = precision
    if file_precision not in files:
        other = "fp16" if file_precision == "fp32" else "fp32"
        if settings.precision != "auto" or other not in files:
            raise ModelLoadError(f"{entry.name}: no {file_precision} file in config.json (has {sorted(files)})")
        log.warning("%s: no %s file, using %s", entry.name, file_precision, other)
        file_precision = other
        if device != "tensorrt":
            precision = other
    providers: list = []
    if device == "tensorrt":
        cache = Path(settings.trt_cache_dir).resolve() / entry.name
        cache.mkdir(parents=True, exist_ok=True)
        trt = {
            "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": 2 << 30,
        }
        if input_shape is not None:  # one optimisation profile covering batch 1..max at the native size
            name = entry.config.input.name
            dims = "x".join(str(d) for d in input_shape[1:])
            trt["trt_profile_min_shapes"] = f"{name}:1x{dims}"
            trt["trt_profile_opt_shapes"] = f"{name}:{input_shape[0]}x{dims}"
            trt["trt_profile_max_shapes"] = f"{name}:{input_shape[0]}x{dims}"
        providers.append((TRT, trt))
    if device in ("tensorrt", "cuda"):
        providers.append((CUDA, {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                 "do_copy_in_default_stream": True}))
    providers.append((CPU, {}))
    return Plan(device=device, file_precision=file_precision, precision=precision, providers=providers)


def session_options(settings: Settings, threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Spinning worker threads answer faster between kernels but burn cores that decoding, encoding
    # and HTTP need; which wins depends on the machine (BENCHMARKS.md), so it is a setting.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.intra_op_spinning else "0")
    so.log_severity_level = 3
    return so


class Session:
    """One onnxruntime session (one model instance). `run` is called from a worker thread, one batch at a time."""

    def __init__(self, path: Path, plan: Plan, settings: Settings, threads: int):
        self.path = path
        self.plan = plan
        self.threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(settings, threads),
                                                providers=plan.providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {e}", path=path) from e
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0]
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{path}: expected one input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.input_type = inputs[0].type
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_types = [o.type for o in self.session.get_outputs()]
        self.output_shapes = [list(o.shape) for o in self.session.get_outputs()]
        self.on_gpu = self.provider in GPU_PROVIDERS

    @property
    def precision(self) -> str:
        if self.provider == TRT:
            return self.plan.precision
        return self.plan.file_precision

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one batch made of `arrays` (each HxWxC uint8); returns every output with the batch axis."""
        x = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
        if self.on_gpu:
            # IO binding: the input goes to device memory once, outputs are allocated on the device
            # and copied back in one go, with no intermediate host buffers of onnxruntime's.
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for name in self.output_names:
                binding.bind_output(name, "cuda", 0)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        return self.session.run(self.output_names, {self.input_name: x})


class ModelRuntime:
    """The `instances` sessions of one model, with what they actually run on, and the solo session
    (all the instances' cores in one session, for a batch that is the only work; CPU only)."""

    def __init__(self, entry: ModelEntry, sessions: list[Session], solo: Session | None = None):
        self.entry = entry
        self.sessions = sessions
        self.solo = solo
        first = sessions[0]
        self.provider = first.provider
        self.providers = first.providers
        self.precision = first.precision
        self.device = SHORT.get(first.provider, first.provider)
        self.path = first.path
        self.input_name = first.input_name
        self.output_names = first.output_names
        self.output_types = first.output_types
        self.warmup_s: float | None = None

    @classmethod
    def load(cls, entry: ModelEntry, settings: Settings) -> "ModelRuntime":
        cfg = entry.config
        available = available_providers()
        device = resolve_device(settings.device, available)
        native = (settings.max_batch_size, cfg.input.height, cfg.input.width, cfg.input.channels)
        plan = make_plan(entry, settings, device, input_shape=None if settings.native_size else native)
        path = entry.file_for(plan.file_precision, verify=settings.verify_sha256)
        first = Session(path, plan, settings, settings.session_threads(settings.instance_count(device)))
        if device != "cpu" and not first.on_gpu:
            if settings.device != "auto":
                raise ModelLoadError(f"{entry.name}: device={settings.device} was asked but onnxruntime runs it on "
                                     f"{first.providers} (no usable GPU?)")
            log.warning("%s: %s is listed by onnxruntime but the session fell back to %s; using the CPU plan",
                        entry.name, plan.providers[0][0], first.provider)
            plan = make_plan(entry, settings, "cpu")
            path = entry.file_for(plan.file_precision, verify=settings.verify_sha256)
            first = Session(path, plan, settings, settings.session_threads(settings.instance_count("cpu")))
        on_cpu = not first.on_gpu
        count = settings.instance_count("cpu" if on_cpu else plan.device)
        sessions = [first] + [Session(path, plan, settings, first.threads) for _ in range(count - 1)]
        solo = None
        if on_cpu and count > 1 and settings.solo_instance:
            solo = Session(path, plan, settings, first.threads * count)
        runtime = cls(entry, sessions, solo)
        runtime._check_signature()
        log.info("%s: %s on %s (%s), %d instance(s) of %d thread(s)%s", entry.name, path.name, runtime.provider,
                 runtime.precision, len(sessions), first.threads,
                 f" + a solo instance of {solo.threads}" if solo else "")
        return runtime

    def _check_signature(self) -> None:
        cfg = self.entry.config
        s = self.sessions[0]
        if s.input_type != "tensor(uint8)":
            raise ModelLoadError(f"{self.entry.name}: input {s.input_name} is {s.input_type}, the contract says uint8")
        if len(s.input_shape) != 4 or (isinstance(s.input_shape[3], int) and s.input_shape[3] != cfg.input.channels):
            raise ModelLoadError(f"{self.entry.name}: input shape {s.input_shape} is not [N, H, W, {cfg.input.channels}]")
        want = cfg.outputs[0].name
        if s.output_names[0] != want:
            raise ModelLoadError(f"{self.entry.name}: first output is {s.output_names[0]!r}, config.json says {want!r}")
        types = dict(zip(s.output_names, s.output_types))
        for out in cfg.outputs:
            want_type = ORT_TYPES[out.dtype]
            if types.get(out.name) != want_type:
                raise ModelLoadError(f"{self.entry.name}: output {out.name} is {types.get(out.name, 'missing')}, "
                                     f"config.json says {want_type}")

    def warm(self, shapes: Sequence[tuple[int, int, int]], batch_sizes: Sequence[int]) -> float:
        """Run every session once per (batch size, HxWxC shape), so no request pays for first-run setup."""
        t0 = time.perf_counter()
        for session in self.sessions + ([self.solo] if self.solo else []):
            for shape in shapes:
                image = np.zeros(shape, np.uint8)
                for b in batch_sizes:
                    session.run([image] * b)
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def measure_batches(self, shape: tuple[int, int, int], batch_sizes: Sequence[int], repeats: int = 2) -> dict[int, float]:
        """Images/s of the first session per batch size (best of `repeats` runs; call after warm())."""
        session = self.sessions[0]
        image = np.zeros(shape, np.uint8)
        rates = {}
        for b in batch_sizes:
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run([image] * b)
                best = min(best, time.perf_counter() - t0)
            rates[b] = b / max(best, 1e-9)
        return rates


def pick_batch_size(rates: dict[int, float], tolerance: float = 0.03) -> int:
    """The smallest batch size whose images/s is within `tolerance` of the best one."""
    best = max(rates.values())
    return min(b for b, r in rates.items() if r >= (1 - tolerance) * best)


def tuning_candidates(max_batch_size: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch_size]
