"""onnxruntime sessions: the provider chain, precision, IO binding and warm-up.

Which providers, file, options and TensorRT profile to ask for is planned in service/providers.py;
this module creates the sessions and walks the chain: under `device=auto` TensorRT, else CUDA, else
the CPU, each plan that fails (any exception: onnxruntime's EPFail is no RuntimeError) or lands on
other providers than it asked for logged in one line and the model served by the next; an explicit
`tensorrt` or `cuda` that cannot be honoured stops the start. What `/models` reports is read back
from the session (`get_providers()`).
"""
from __future__ import annotations

import logging
import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

try:
    import onnxruntime as ort
except ImportError:  # the base install has no runtime: enet-serve[cpu] or enet-serve[gpu] brings one
    ort = None  # type: ignore[assignment]

from enet_serve.model_config import ModelConfig, sha256_file
from enet_serve.service.errors import ModelLoadError
from enet_serve.service.providers import (
    CPU, CUDA, DEVICE_OF, PROVIDER_OF, TRT, Plan, PlanError, Profile, chain, cuda_options, cudnn_search,
    engine_cache_dir, gpu_file_key, mismatch, one_line, parse_size, tensorrt_profile, trt_options)
from enet_serve.service.repository import ModelEntry
from enet_serve.service.settings import Settings

log = logging.getLogger("enet_serve.service.runtime")

GPU_PROVIDERS = (TRT, CUDA)
SHORT = DEVICE_OF
ORT_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}  # config.json dtype -> onnxruntime's
NUMPY_TYPES = {"uint8": np.uint8, "float32": np.float32}
BINDINGS_PER_SESSION = 16  # preallocated IO bindings kept per session (one per batch shape; LRU)
NO_RUNTIME = ("onnxruntime is not installed: install the CPU runtime (pip install 'enet-serve[cpu]') or the GPU "
              "runtime (pip install 'enet-serve[gpu]'), not both")


def require_onnxruntime():
    """The onnxruntime module, or ModelLoadError saying which extra to install."""
    if ort is None:
        raise ModelLoadError(NO_RUNTIME)
    return ort


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed (more than one: they overwrite each other's files)."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


def runtime_problem() -> tuple[str, str] | None:
    """("error", why) when no onnxruntime can be imported; ("warning", why) when both builds are installed."""
    if ort is None:
        return "error", NO_RUNTIME
    found = installed_runtimes()
    if len(found) > 1:
        return "warning", (f"both {' and '.join(found)} are installed; they share the onnxruntime package and the one "
                           "installed last wins: uninstall both and install one (enet-serve[cpu] or enet-serve[gpu])")
    return None


def available_providers() -> list[str]:
    return list(require_onnxruntime().get_available_providers())


_dlls_preloaded = False


def preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn]) before the first GPU
    session, so no LD_LIBRARY_PATH is needed; onnxruntime builds without preload_dlls skip it."""
    global _dlls_preloaded
    if _dlls_preloaded:
        return
    _dlls_preloaded = True
    try:
        # TensorRT's pip libraries (optional) load themselves on import; the TensorRT provider then
        # finds libnvinfer already loaded instead of searching LD_LIBRARY_PATH.
        import tensorrt_libs  # noqa: F401
    except ImportError:
        pass
    except Exception as e:
        log.warning("tensorrt_libs failed to load: %s", one_line(e))
    if not hasattr(ort, "preload_dlls"):
        return
    try:
        ort.preload_dlls()
    except Exception as e:  # a missing library shows up again, with its name, when the session is made
        log.warning("onnxruntime.preload_dlls() failed: %s", one_line(e))


def make_plan(entry: ModelEntry, settings: Settings, device: str) -> Plan:
    """The providers, file and options for `device` ("tensorrt", "cuda" or "cpu") under `settings`."""
    cfg = entry.config
    files = sorted(cfg.files)
    gpu = device in ("tensorrt", "cuda")
    precision = settings.precision if settings.precision != "auto" else ("fp16" if gpu else "fp32")
    if precision == "int8" and gpu:
        # QLinearConv and friends have CPU kernels only: on a GPU provider they would run on the CPU.
        raise ModelLoadError(f"{entry.name}: precision=int8 is a CPU graph; use device=cpu (or fp16 on {device})")
    file_key = gpu_file_key(files, precision, device) if gpu else precision
    if file_key not in files:
        others = [k for k in (("fp32_gpu", "fp32", "fp16") if gpu else ("fp32", "fp16")) if k in files]
        if settings.precision != "auto" or not others:
            raise ModelLoadError(f"{entry.name}: no {file_key} file in config.json (has {files})")
        log.warning("%s: no %s file, using %s", entry.name, file_key, others[0])
        file_key = others[0]
        if device != "tensorrt":
            precision = "fp16" if file_key == "fp16" else "fp32"
    varying = settings.native_size and cfg.input.dynamic_size
    search = cudnn_search(settings.cudnn_conv_algo_search, varying)
    plan = Plan(device=device, file_key=file_key, precision=precision)
    if device == "tensorrt":
        plan.profile = model_profile(cfg, settings)
        spec = cfg.files[file_key]
        digest = spec.sha256 or sha256_file(entry.file_for(file_key, verify=False))
        root = Path(settings.trt_cache_dir).expanduser().resolve()
        plan.cache_dir = engine_cache_dir(root, entry.name, digest, precision, plan.profile, ort_version())
        plan.providers.append((TRT, trt_options(precision, plan.cache_dir, root / "timing", plan.profile,
                                                int(settings.trt_workspace_gib * (1 << 30)), settings.gpu_device_id)))
    if gpu:
        plan.cudnn_conv_algo_search = search
        plan.providers.append((CUDA, cuda_options(search, settings.gpu_device_id)))
    plan.providers.append((CPU, {}))
    return plan


def overflow_plan(plan: Plan, settings: Settings) -> Plan:
    """The CUDA plan that runs the shapes outside a TensorRT plan's profile (varying shapes: HEURISTIC)."""
    search = cudnn_search(settings.cudnn_conv_algo_search, True)
    return Plan(device="cuda", file_key=plan.file_key, precision=plan.precision, cudnn_conv_algo_search=search,
                providers=[(CUDA, cuda_options(search, settings.gpu_device_id)), (CPU, {})])


def model_profile(cfg: ModelConfig, settings: Settings) -> Profile:
    inp = cfg.input
    return tensorrt_profile(inp.name, (inp.height, inp.width, inp.channels), settings.max_batch_size,
                            dynamic=inp.dynamic_size, size_multiple=inp.size_multiple, varying=settings.native_size,
                            min_size=parse_size(settings.trt_profile_min_size),
                            max_size=parse_size(settings.trt_profile_max_size))


def ort_version() -> str:
    return getattr(ort, "__version__", "unknown")


def session_options(settings: Settings, threads: int, gpu: bool = False):
    so = require_onnxruntime().SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Spinning worker threads answer faster between kernels but burn cores that decoding, encoding
    # and HTTP need; which wins on a CPU depends on the machine (BENCHMARKS.md), so it is a setting.
    # A GPU session's CPU threads only run the odd node left on the CPU: they never spin.
    spin = settings.intra_op_spinning and not gpu
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    so.enable_cpu_mem_arena = settings.cpu_arena
    so.log_severity_level = 3
    return so


class Binding:
    """One IO binding with its device buffers for one input shape: the input is copied into the same
    device buffer every batch and only the outputs come back to the host."""

    def __init__(self, session: Any, input_name: str, shape: tuple[int, ...], outputs: list[tuple[str, tuple, Any]],
                 device: str, device_id: int):
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.uint8, device, device_id)
        self.outputs = [ort.OrtValue.ortvalue_from_shape_and_type(list(s), t, device, device_id) for _, s, t in outputs]
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(input_name, self.input)
        for (name, _, _), value in zip(outputs, self.outputs):
            self.binding.bind_ortvalue_output(name, value)

    def run(self, session: Any, x: np.ndarray) -> list[np.ndarray]:
        self.input.update_inplace(x)
        session.run_with_iobinding(self.binding)
        return [value.numpy() for value in self.outputs]


class Session:
    """One onnxruntime session (one model instance). `run` is called from a worker thread, one batch at a time.

    On a GPU it runs through IO bindings with preallocated device buffers, one per batch shape (the
    output shapes come from config.json); a TensorRT session hands shapes outside its profile to
    `overflow`, a CUDA session of the same graph."""

    def __init__(self, path: Path, plan: Plan, settings: Settings, threads: int, config: ModelConfig | None = None):
        self.path = path
        self.plan = plan
        self.threads = threads
        self.config = config
        self.overflow: Session | None = None
        self.bind_device = "cuda" if plan.on_gpu else None
        self.device_id = settings.gpu_device_id
        self._bindings: OrderedDict[tuple[int, ...], Binding] = OrderedDict()
        rt = require_onnxruntime()
        try:
            self.session = rt.InferenceSession(str(path), sess_options=session_options(settings, threads, plan.on_gpu),
                                               providers=plan.providers)
        except Exception as e:  # onnxruntime raises its own exception types (EPFail is no RuntimeError)
            raise ModelLoadError(f"{path}: onnxruntime cannot load it on {plan.provider}: {one_line(e)}", path=path) from e
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0] if self.providers else "none"
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
        return self.plan.precision

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one batch made of `arrays` (each HxWxC uint8); returns every output with the batch axis."""
        x = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
        if self.overflow is not None and self.plan.profile is not None and not self.plan.profile.covers(x.shape):
            return self.overflow.run(arrays)
        if self.bind_device is not None:
            binding = self._binding(x.shape)
            if binding is not None:
                return binding.run(self.session, x)
        return self.session.run(self.output_names, {self.input_name: x})

    def _binding(self, shape: tuple[int, ...]) -> Binding | None:
        """The preallocated binding of `shape` (made on first use; the least recently used one is dropped
        past BINDINGS_PER_SESSION); None when config.json does not fix the output shapes."""
        binding = self._bindings.get(shape)
        if binding is not None:
            self._bindings.move_to_end(shape)
            return binding
        outputs = self._output_specs(shape)
        if outputs is None:
            return None
        binding = Binding(self.session, self.input_name, shape, outputs, self.bind_device, self.device_id)
        self._bindings[shape] = binding
        if len(self._bindings) > BINDINGS_PER_SESSION:
            self._bindings.popitem(last=False)
        return binding

    def _output_specs(self, shape: tuple[int, ...]) -> list[tuple[str, tuple, Any]] | None:
        if self.config is None:
            return None
        sides = {"N": shape[0], "H": shape[1], "W": shape[2]}
        by_name = {o.name: o for o in self.config.outputs}
        specs = []
        for name in self.output_names:
            out = by_name.get(name)
            if out is None:
                return None
            dims = tuple(d if isinstance(d, int) else sides.get(d) for d in out.shape)
            if any(d is None for d in dims):
                return None
            specs.append((name, dims, NUMPY_TYPES[out.dtype]))
        return specs


class ModelRuntime:
    """The `instances` sessions of one model, with what they actually run on, and the solo session
    (all the instances' cores in one session, for a batch that is the only work; CPU only)."""

    def __init__(self, entry: ModelEntry, sessions: list[Session], solo: Session | None = None):
        self.entry = entry
        self.sessions = sessions
        self.solo = solo
        first = sessions[0]
        self.plan = first.plan
        self.provider = first.provider
        self.providers = first.providers
        self.precision = first.precision
        self.device = SHORT.get(first.provider, first.provider)
        self.path = first.path
        self.input_name = first.input_name
        self.output_names = first.output_names
        self.output_types = first.output_types
        self.warmup_s: float | None = None
        self.asked = "auto"
        self.fallbacks: list[dict[str, str]] = []  # the plans tried before this one, with why they failed

    @classmethod
    def load(cls, entry: ModelEntry, settings: Settings) -> "ModelRuntime":
        """Walk the provider chain of `settings.device`; the first plan that builds and runs where it asked serves."""
        try:
            devices = chain(settings.device, available_providers())
        except PlanError as e:
            raise ModelLoadError(f"{entry.name}: {e}") from None
        explicit = settings.device != "auto"
        fallbacks: list[dict[str, str]] = []
        for i, device in enumerate(devices):
            try:
                runtime = cls.load_plan(entry, settings, device)
            except Exception as e:
                reason = one_line(e)
                if explicit or i == len(devices) - 1:
                    raise ModelLoadError(f"{entry.name}: device={device} ({PROVIDER_OF[device]}) failed: {reason}",
                                         path=getattr(e, "path", None)) from e
                log.warning("%s: %s failed, falling back to %s: %s", entry.name, PROVIDER_OF[device],
                            PROVIDER_OF[devices[i + 1]], reason)
                fallbacks.append({"provider": PROVIDER_OF[device], "reason": reason})
                continue
            runtime.asked = settings.device
            runtime.fallbacks = fallbacks
            return runtime
        raise AssertionError("unreachable: the chain always ends in a device that raises or serves")

    @classmethod
    def load_plan(cls, entry: ModelEntry, settings: Settings, device: str) -> "ModelRuntime":
        """The runtime of one plan of the chain (raises when it fails or lands on other providers)."""
        plan = make_plan(entry, settings, device)
        path = entry.file_for(plan.file_key, verify=settings.verify_sha256)
        if plan.on_gpu:
            preload_gpu_libraries()
        if plan.cache_dir is not None:
            plan.cache_dir.mkdir(parents=True, exist_ok=True)
            (plan.cache_dir.parent.parent / "timing").mkdir(parents=True, exist_ok=True)
        count = settings.instance_count(device)
        # GPU sessions get one CPU thread (the GPU does the work; the cores decode and encode).
        threads = (settings.intra_op_threads or 1) if plan.on_gpu else settings.session_threads(count)
        first = Session(path, plan, settings, threads, entry.config)
        wrong = mismatch(plan, first.providers)
        if wrong:
            raise ModelLoadError(f"{path.name}: {wrong}")
        sessions = [first] + [Session(path, plan, settings, threads, entry.config) for _ in range(count - 1)]
        if device == "tensorrt" and entry.config.input.dynamic_size:
            # Shapes outside the profile (v2 requests of other sizes; native_size beyond the bounds) go
            # to a CUDA session rather than making TensorRT build an engine inside a request: one per
            # instance, as instances run at once and a session's IO bindings hold one batch at a time.
            extra = overflow_plan(plan, settings)
            for s in sessions:
                s.overflow = Session(path, extra, settings, threads, entry.config)
                wrong = mismatch(extra, s.overflow.providers)
                if wrong:
                    raise ModelLoadError(f"{path.name}: the CUDA session for shapes outside the TensorRT profile: "
                                         f"{wrong}")
        solo = None
        if not plan.on_gpu and count > 1 and settings.solo_instance:
            solo = Session(path, plan, settings, threads * count, entry.config)
        runtime = cls(entry, sessions, solo)
        runtime._check_signature()
        log.info("%s: %s on %s (%s), %d instance(s) of %d thread(s)%s%s", entry.name, path.name, runtime.provider,
                 runtime.precision, len(sessions), threads, f" + a solo instance of {solo.threads}" if solo else "",
                 " + a CUDA session each for shapes outside the TensorRT profile" if first.overflow else "")
        return runtime

    def describe(self) -> dict[str, Any]:
        """How the model runs, for GET /models: the plan, what was tried before it, the TensorRT profile."""
        plan = self.plan
        profile = plan.profile
        overflow = self.sessions[0].overflow
        return {
            "asked": self.asked,
            "fallbacks": self.fallbacks,
            "file_key": plan.file_key,
            "tensorrt_profile": profile.describe() if profile else None,
            # where inputs outside the TensorRT profile run: "cuda" (a CUDA session of the same graph)
            "outside_profile": (SHORT.get(overflow.provider, overflow.provider) if overflow else "none: the model takes its native size only") if profile else None,
            "engine_cache": str(plan.cache_dir) if plan.cache_dir else None,
            "cudnn_conv_algo_search": plan.cudnn_conv_algo_search,
            "io_binding": self.sessions[0].bind_device is not None,
        }

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

    def measure_batches(self, shape: tuple[int, int, int], batch_sizes: Sequence[int], rounds: int = 3,
                        settings: Settings | None = None) -> dict[int, float]:
        """Images/s per batch size: the median of `rounds` timed runs after one warm-up run each, the
        sizes interleaved within each round so that a noisy stretch of a shared machine does not land on
        one size. On a temporary session like the first one (given `settings`), else on the first session
        itself: the temporary session takes the large batches' buffers with it when it goes, so the
        serving sessions' memory arenas only ever grow to the batch sizes they serve."""
        first = self.sessions[0]
        session = first if settings is None else Session(self.path, first.plan, settings, first.threads, first.config)
        image = np.zeros(shape, np.uint8)
        times: dict[int, list[float]] = {b: [] for b in batch_sizes}
        for b in batch_sizes:
            session.run([image] * b)
        for _ in range(rounds):
            for b in batch_sizes:
                t0 = time.perf_counter()
                session.run([image] * b)
                times[b].append(time.perf_counter() - t0)
        return {b: b / max(statistics.median(t), 1e-9) for b, t in times.items()}


def pick_batch_size(rates: dict[int, float], tolerance: float = 0.1) -> int:
    """The smallest batch size whose images/s is within `tolerance` of the best one: a larger batch must
    be clearly faster to be worth its latency and its memory (its buffers stay in the arenas)."""
    best = max(rates.values())
    return min(b for b, r in rates.items() if r >= (1 - tolerance) * best)


def tuning_candidates(max_batch_size: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch_size]
