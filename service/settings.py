"""The service's settings: one pydantic-settings object, read from `ENET_SERVE_*` environment variables.

Every field is also a flag of `enet-serve serve` (`max_batch_size` -> `--max-batch-size`); flags win
over the environment, which wins over the defaults here. List fields (`models`, `api_keys`) accept
a comma-separated string or a JSON list in the environment.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from enet_serve.service.providers import parse_size

Device = Literal["auto", "cpu", "cuda", "tensorrt"]
ComputePrecision = Literal["fp32", "fp16", "int8"]  # what a session computes in (GET /models says which)
Precision = Literal["auto", ComputePrecision]


CGROUP_ROOT = Path("/sys/fs/cgroup")


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/enet-serve` (else ~/.cache/enet-serve): never the working directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enet-serve"


def cpu_count() -> int:
    """Cores this process may use: the affinity mask (cpusets), capped by the cgroup's CPU quota
    rounded up (a Kubernetes CPU limit is a quota, not a cpuset: the mask still shows every core)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def cgroup_cpu_quota(root: Path | None = None) -> float | None:
    """CPUs the cgroup's quota allows (v2 `cpu.max`, v1 `cpu/cpu.cfs_quota_us` over `cpu.cfs_period_us`);
    None when unlimited or unreadable."""
    root = root or CGROUP_ROOT
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENET_SERVE_", extra="ignore", validate_default=True)

    # -- what to serve -------------------------------------------------------------------------
    repository: Path = Field(Path("model_repository"), description="model repository directory")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="models to load (comma-separated); empty: all in the repository")
    default_segment_model: str = Field("enet-camvid", description="model used by /segment without model=")
    default_classify_model: str = Field("lenet5-fashion", description="model used by /classify without model=")
    allow_untrained: bool = Field(False, description="load models whose config says weights.trained: false")
    verify_sha256: bool = Field(True, description="check the ONNX files against config.json's sha256")

    # -- runtime -------------------------------------------------------------------------------
    device: Device = Field("auto", description="auto: TensorRT, else CUDA, else CPU")
    precision: Precision = Field(
        "auto", description="auto: fp16 on GPU, fp32 on CPU; int8: the statically quantized graph (CPU only; "
        "`enet-serve export --precision fp32,int8` makes it)")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads per instance; 0: all cores / instances")
    intra_op_spinning: bool = Field(
        True, description="let onnxruntime's CPU worker threads spin between kernels (onnxruntime's default: "
        "faster inference; turn off where other work shares the cores, e.g. training)")

    # -- GPU: TensorRT and CUDA ----------------------------------------------------------------
    trt_cache_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "trt",
        description="TensorRT engine and timing caches (engines keyed by the ONNX file's sha256, precision, profile "
        "and onnxruntime version); on a volume that outlives the container, the first start builds them once")
    trt_profile_min_size: str = Field(
        "64x64", description="HxW: the smallest input of the TensorRT profile when native_size varies the sizes")
    trt_profile_max_size: str = Field(
        "1080x1920", description="HxW: the largest input of the TensorRT profile when native_size varies the sizes; "
        "larger ones (and v2 inputs of other sizes) run on a CUDA session of the same graph")
    trt_workspace_gib: float = Field(2.0, gt=0, description="TensorRT's builder workspace (GiB)")
    cudnn_conv_algo_search: Literal["auto", "EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "auto", description="cuDNN convolution algorithm search; auto: EXHAUSTIVE for fixed input sizes, HEURISTIC "
        "with native_size (EXHAUSTIVE would search again for every new size, inside requests)")
    gpu_device_id: int = Field(0, ge=0, description="the CUDA device the sessions run on")

    @field_validator("trt_profile_min_size", "trt_profile_max_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    # -- batching ------------------------------------------------------------------------------
    max_batch_size: int = Field(8, ge=1, le=256, description="largest batch the batcher forms")
    tune_batch_size: bool = Field(
        True, description="at warm-up, time batch sizes up to max_batch_size and batch at most up to the smallest "
        "one within 10 percent of the best images/s (on CPU, large batches of big inputs are often slower per image, "
        "and a larger batch must be clearly faster to be worth its latency and memory)")
    max_delay_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests after its first")
    max_queue: int = Field(64, ge=1, description="requests waiting per model; past it 503 with Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline of a request in the queue; past it 504")
    instances: int = Field(
        0, ge=0, le=16, description="sessions per model that run batches concurrently, each with cores / instances "
        "threads; 0: auto (2 on a CPU with 2 or more cores, else 1): on the CPU, two sessions with half the cores "
        "each keep the cores busier under load than one with all of them")
    solo_instance: bool = Field(
        True, description="with more than one CPU instance: one more session, with the cores of all instances, runs a "
        "batch that is the only work (nothing else queued, running or being decoded) while it measures faster per "
        "image than one instance, so a lone request gets every core")
    native_size: bool = Field(
        False, description="run dynamic-size models (ENet) at the image's own size (padded to the size multiple) "
        "instead of resizing to the native size; batches only same-shape requests")

    # -- memory (BENCHMARKS.md, "Memory") -------------------------------------------------------------
    cpu_arena: bool = Field(
        True, description="onnxruntime's CPU memory arena per session: keeps the buffers of the largest batch run "
        "so far for reuse; off, every run allocates and frees (less resident memory, a little slower)")
    warm_batch_sizes: Literal["served", "all"] = Field(
        "served", description="served: the batch-size tuning runs on a temporary session and the serving sessions "
        "are warmed only at the batch sizes they will run (1..the tuned maximum), so their arenas stay that size; "
        "all: every size up to max_batch_size")

    # -- requests ------------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted API keys (comma-separated); empty: no authentication")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest request body; past it 413")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest decoded image (width x height); past it 413")
    decode_threads: int = Field(0, ge=0, description="threads for decoding and encoding; 0: the number of cores")
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level of mask PNGs (RLE strategy)")
    overlay_alpha: float = Field(0.5, ge=0, le=1, description="default weight of the mask colours in format=overlay")

    # -- the video stream (WS /segment/stream) --------------------------------------------------
    stream_max_connections: int = Field(
        64, ge=1, description="open /segment/stream connections; past it a new one is closed with 4503")
    stream_max_frame_bytes: int = Field(
        8 * 1024 * 1024, ge=1, description="largest stream frame (one binary message); past it the connection "
        "is closed with 1009 (message too big)")

    # -- demo page and response timings --------------------------------------------------------
    demo_page: bool = Field(
        True, description="serve the demo page at / (its files under /static, its data at /ui/config); off: / is 404")
    server_timing: bool = Field(
        True, description="add a Server-Timing header to every response: decode, queue, infer, encode and total ms")
    tracing: Literal["off", "otlp", "console"] = Field(
        "off", description="OpenTelemetry traces (the `tracing` extra): a server span per HTTP request with a span per "
        "phase (decode, queue, infer, encode); otlp: to the collector of OTEL_EXPORTER_OTLP_ENDPOINT (default "
        "http://localhost:4318); console: printed to stdout")

    # -- server --------------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field("info", description="log level")
    access_log: bool = Field(True, description="log one line per request")

    # -- reliability: faults, drain, slow clients, logs --------------------------------------------
    exit_on_error: bool = Field(
        True, description="a model that fails to load or warm up stops the server (exit 3), as Triton's "
        "--exit-on-error; off: it is logged with its file and reason, stays unready (GET /models says why, its routes "
        "answer 503) and the other models serve")
    drain_timeout_s: float = Field(
        60.0, gt=0, description="on SIGTERM: how long the requests already accepted (running or queued) have to be "
        "answered before the rest get 503 and the process exits; keep it above body_timeout_s + request_timeout_s "
        "for a drain that loses nothing")
    body_timeout_s: float = Field(
        20.0, gt=0, description="time a request body may take to arrive in full; past it 408 (a trickling client "
        "holds no decode thread meanwhile)")
    max_connections: int = Field(
        512, ge=1, description="requests served at once, each holding its connection (health and metrics not "
        "counted); past it 503 with Retry-After")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text or as one JSON object per line; both carry the request id")

    @field_validator("models", "api_keys", mode="before")
    @classmethod
    def _split_list(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = text.split(",")
        if isinstance(value, (list, tuple)):
            return [str(v).strip() for v in value if str(v).strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value

    # -- derived -------------------------------------------------------------------------------
    def instance_count(self, device: str) -> int:
        """`instances`, or for 0 (auto) 2 on a CPU with 2 or more cores and 1 on a GPU."""
        if self.instances:
            return self.instances
        return 2 if device == "cpu" and cpu_count() >= 2 else 1

    def session_threads(self, instances: int) -> int:
        """Intra-op threads of each of `instances` sessions."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, cpu_count() // instances)

    def codec_threads(self) -> int:
        return self.decode_threads or cpu_count()


def env_name(field: str) -> str:
    return f"ENET_SERVE_{field.upper()}"
