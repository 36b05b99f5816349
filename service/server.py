"""The loaded models and the request pipelines: decode (codec threads) -> batcher -> encode (codec threads).

`ModelServer.load()` reads the repository, verifies and opens every configured model (a failure
stops the start, as Triton does); `start()` starts the batchers and warms every model in the
background, so `/health/live` answers at once and `/health/ready` turns 200 only once all are warm.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from enet_serve.service import codecs
from enet_serve.service.batching import Batcher
from enet_serve.service.errors import InvalidParameter, ModelLoadError, ModelNotFound, NotReady
from enet_serve.service.metrics import Metrics
from enet_serve.service.repository import ModelConfig, ModelEntry, ModelRepository
from enet_serve.service.runtime import ModelRuntime, pick_batch_size, tuning_candidates
from enet_serve.service.settings import Settings

log = logging.getLogger("service")

TASK_WORDS = {"segment": "segmentation", "classify": "classification"}


@dataclass
class Prepared:
    """A decoded request, ready for the batcher."""

    array: np.ndarray  # model input HxWxC
    key: tuple  # batching key (input shape)
    width: int  # the image's own size
    height: int
    valid: tuple[int, int] | None  # (h, w) of the image inside a padded input (native-size mode)
    original: np.ndarray | None  # the full decoded image (overlay only)
    decode_s: float


class LoadedModel:
    def __init__(self, entry: ModelEntry, runtime: ModelRuntime, settings: Settings):
        self.entry = entry
        self.name = entry.name
        self.config: ModelConfig = entry.config
        self.runtime = runtime
        self.settings = settings
        self.ready = False
        self.batcher: Batcher | None = None
        self.batch_size = settings.max_batch_size  # the effective maximum (see tune_batch_size)
        self.batch_rates: dict[int, float] | None = None
        cfg = self.config
        self.task = cfg.task
        self.class_names = cfg.class_names()
        self.height, self.width, self.channels = cfg.input.height, cfg.input.width, cfg.input.channels
        self.native_size = settings.native_size and cfg.input.dynamic_size
        if self.task == "segment":
            colors = cfg.palette()
            self.palette = codecs.palette_bytes(colors)
            self.lut = codecs.color_lut(colors)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether an HxWxC input of `shape` can go to the model as it is (v2 tensors)."""
        if len(shape) != 3 or shape[2] != self.channels:
            return False
        if self.config.input.dynamic_size:
            m = self.config.input.size_multiple
            return shape[0] > 0 and shape[1] > 0 and shape[0] % m == 0 and shape[1] % m == 0
        return tuple(shape[:2]) == (self.height, self.width)

    def describe(self) -> dict[str, Any]:
        cfg, s, rt = self.config, self.settings, self.runtime
        info: dict[str, Any] = {
            "name": self.name,
            "task": cfg.task,
            "architecture": cfg.architecture,
            "version": cfg.version,
            "ready": self.ready,
            "labels": self.class_names,
            "num_classes": len(self.class_names),
            "input": {"name": cfg.input.name, "dtype": "uint8", "layout": "NHWC", "height": self.height,
                      "width": self.width, "channels": self.channels, "dynamic_size": cfg.input.dynamic_size,
                      "size_multiple": cfg.input.size_multiple},
            "outputs": [o.model_dump() for o in cfg.outputs],
            "provider": rt.provider,
            "providers": rt.providers,
            "device": rt.device,
            "precision": rt.precision,
            "file": str(rt.path.relative_to(self.entry.directory.resolve())) if rt.path.is_relative_to(
                self.entry.directory.resolve()) else str(rt.path),
            "parameters": cfg.parameters,
            "gflops": cfg.gflops,
            "reference": cfg.reference.model_dump(exclude_unset=True) if cfg.reference else None,
            "paper": cfg.paper,
            "trained": cfg.weights.trained,
            "metrics": cfg.metrics,
            "batching": {"max_batch_size": s.max_batch_size, "effective_max_batch_size": self.batch_size,
                         "measured_images_per_s": {str(b): round(r, 2) for b, r in (self.batch_rates or {}).items()},
                         "max_delay_ms": s.max_delay_ms,
                         "max_queue": s.max_queue, "instances": len(rt.sessions),
                         "threads_per_instance": rt.sessions[0].threads,
                         "solo_instance_threads": rt.solo.threads if rt.solo else None,
                         "request_timeout_s": s.request_timeout_s,
                         "native_size": self.native_size},
            "warmup_s": rt.warmup_s,
        }
        if cfg.task == "segment":
            info["colors"] = [list(c) for c in cfg.palette()]
            info["void"] = cfg.void.model_dump() if cfg.void else None
        return info


class ModelServer:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.codec_pool = ThreadPoolExecutor(max_workers=settings.codec_threads(), thread_name_prefix="codec")
        self._warm_task: asyncio.Task | None = None
        self.warm_error: str | None = None
        self.started_at = time.time()

    # -- lifecycle ------------------------------------------------------------------------------------
    def load(self) -> None:
        """Read, verify and open every configured model (blocking; run it in a thread)."""
        s = self.settings
        repo = ModelRepository(s.repository)
        names = s.models or repo.names()
        if not names:
            raise ModelLoadError(f"no models in {s.repository} (expected <name>/config.json)")
        for entry in repo.entries(names):
            if not entry.config.weights.trained and not s.allow_untrained:
                raise ModelLoadError(
                    f"{entry.name}: config.json says weights.trained: false (random weights); refusing to serve it. "
                    "Export trained weights, or start with --allow-untrained / ENET_SERVE_ALLOW_UNTRAINED=1")
            runtime = ModelRuntime.load(entry, s)
            self.models[entry.name] = LoadedModel(entry, runtime, s)
            self.metrics.model_ready.labels(entry.name).set(0)
            self.metrics.model_info.labels(entry.name, entry.config.task, runtime.provider, runtime.precision).set(1)

    def start(self) -> None:
        """Start the batchers and the background warm-up (needs the running loop)."""
        s = self.settings
        for m in self.models.values():
            solo = m.runtime.solo.run if m.runtime.solo else None
            m.batcher = Batcher(m.name, [sess.run for sess in m.runtime.sessions], solo=solo, max_batch_size=s.max_batch_size,
                                max_delay_ms=s.max_delay_ms, max_queue=s.max_queue, timeout_s=s.request_timeout_s,
                                observer=self.metrics.observer(m.name))
            m.batcher.start()
        self._warm_task = asyncio.get_running_loop().create_task(self._warm_all(), name="warm-up")

    async def _warm_all(self) -> None:
        loop = asyncio.get_running_loop()
        for m in self.models.values():
            try:
                sizes = list(range(1, self.settings.max_batch_size + 1))
                seconds = await loop.run_in_executor(None, warm_model, m, sizes)
                if self.settings.tune_batch_size and self.settings.max_batch_size > 1:
                    m.batch_rates = await loop.run_in_executor(
                        None, m.runtime.measure_batches, m.input_shape, tuning_candidates(self.settings.max_batch_size))
                    m.batch_size = pick_batch_size(m.batch_rates)
                    assert m.batcher is not None
                    m.batcher.max_batch_size = m.batch_size
            except Exception as e:
                self.warm_error = f"{m.name}: warm-up failed: {e}"
                log.exception("%s: warm-up failed", m.name)
                return
            m.ready = True
            self.metrics.model_ready.labels(m.name).set(1)
            log.info("%s: warm (batch sizes 1..%d) in %.2f s; batches of up to %d (measured images/s: %s)", m.name,
                     self.settings.max_batch_size, seconds, m.batch_size,
                     ", ".join(f"{b}: {r:.1f}" for b, r in (m.batch_rates or {}).items()) or "not measured")

    async def stop(self) -> None:
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
            try:
                await self._warm_task
            except (asyncio.CancelledError, Exception):
                pass
        for m in self.models.values():
            m.ready = False
            self.metrics.model_ready.labels(m.name).set(0)
            if m.batcher is not None:
                await m.batcher.stop()
        self.codec_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    # -- lookup ----------------------------------------------------------------------------------------
    def default_name(self, task: str) -> str | None:
        wanted = self.settings.default_segment_model if task == "segment" else self.settings.default_classify_model
        if wanted in self.models and self.models[wanted].task == task:
            return wanted
        same = sorted(n for n, m in self.models.items() if m.task == task)
        return same[0] if same else None

    def get(self, name: str | None, task: str | None = None) -> LoadedModel:
        if name is None:
            assert task is not None
            name = self.default_name(task)
            if name is None:
                raise ModelNotFound(f"no {TASK_WORDS[task]} model is loaded")
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}; loaded: {', '.join(sorted(self.models)) or 'none'}")
        if task is not None and model.task != task:
            route = "/segment" if model.task == "segment" else "/classify"
            raise InvalidParameter(f"model {name!r} is a {TASK_WORDS[model.task]} model; use {route}",
                                   code="wrong_task")
        return model

    def ready_model(self, name: str | None, task: str | None = None) -> LoadedModel:
        model = self.get(name, task)
        if not model.ready or model.batcher is None:
            raise NotReady(f"model {model.name} is still loading (warming up); retry shortly", retry_after=2)
        return model

    async def codec(self, fn: Callable, *args, **kwargs):
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self.codec_pool, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self.codec_pool, fn, *args)

    # -- pipelines ---------------------------------------------------------------------------------------
    async def _infer_image(self, model: LoadedModel, data: bytes, keep_original: bool) -> tuple[Prepared, tuple]:
        assert model.batcher is not None
        with model.batcher.announce() as announcement:
            prepared = await self.codec(prepare_image, model, data, self.settings.max_image_pixels, keep_original)
            announcement.done()
            self.metrics.decode.labels(model.name).observe(prepared.decode_s)
            outputs = await model.batcher.submit(prepared.array, key=prepared.key)
        return prepared, outputs

    async def segment(self, model: LoadedModel, data: bytes, fmt: str, alpha: float) -> tuple[bytes, str]:
        prepared, outputs = await self._infer_image(model, data, keep_original=fmt == "overlay")
        return await self.codec(encode_segmentation, model, prepared, outputs[0], fmt, alpha,
                                self.settings.png_compress_level)

    async def classify(self, model: LoadedModel, data: bytes, top_k: int) -> dict:
        _, outputs = await self._infer_image(model, data, keep_original=False)
        return {"model": model.name, "predictions": top_predictions(outputs[0], model.class_names, top_k)}

    async def infer_tensor(self, model: LoadedModel, batch: np.ndarray) -> list[np.ndarray]:
        """v2 infer: every row of an NxHxWxC uint8 batch through the batcher; outputs stacked back."""
        assert model.batcher is not None
        rows = await asyncio.gather(*(model.batcher.submit(np.ascontiguousarray(x), key=x.shape) for x in batch))
        return [np.stack([r[i] for r in rows]) for i in range(len(rows[0]))]


# -- the synchronous parts (codec threads) -----------------------------------------------------------

def warm_model(model: LoadedModel, batch_sizes: list[int]) -> float:
    return model.runtime.warm([model.input_shape], batch_sizes)


def prepare_image(model: LoadedModel, data: bytes, max_pixels: int, keep_original: bool) -> Prepared:
    t0 = time.perf_counter()
    if model.native_size:
        decoded = codecs.decode_image(data, channels=model.channels, max_pixels=max_pixels)
        image = decoded.array
        x = codecs.pad_to_multiple(image, model.config.input.size_multiple)
        valid = (image.shape[0], image.shape[1])
    else:
        decoded = codecs.decode_image(data, channels=model.channels, max_pixels=max_pixels,
                                      min_size=None if keep_original else (model.height, model.width))
        image = decoded.array
        x = codecs.resize_image(image, model.height, model.width)
        valid = None
    return Prepared(array=x, key=x.shape, width=decoded.width, height=decoded.height, valid=valid,
                    original=image if keep_original else None, decode_s=time.perf_counter() - t0)


def mask_at_input_size(mask: np.ndarray, prepared: Prepared) -> np.ndarray:
    if prepared.valid is not None:
        mask = mask[: prepared.valid[0], : prepared.valid[1]]
    return codecs.resize_mask(mask, prepared.height, prepared.width)


def encode_segmentation(model: LoadedModel, prepared: Prepared, mask: np.ndarray, fmt: str, alpha: float,
                        level: int) -> tuple[bytes, str]:
    mask = mask_at_input_size(mask, prepared)
    if fmt == "png":
        return codecs.encode_mask_png(mask, model.palette, level), "image/png"
    if fmt == "overlay":
        assert prepared.original is not None
        image = prepared.original
        if image.shape[:2] != mask.shape:
            image = codecs.resize_image(image, *mask.shape)
        return codecs.encode_jpeg(codecs.overlay(image, mask, model.lut, alpha)), "image/jpeg"
    body = {
        "model": model.name,
        "width": prepared.width,
        "height": prepared.height,
        "classes": model.class_names,
        "mask_png": codecs.b64(codecs.encode_mask_png(mask, model.palette, level)),
        "class_fractions": codecs.class_fractions(mask, model.class_names),
    }
    return json.dumps(body, separators=(",", ":")).encode(), "application/json"


def top_predictions(probabilities: np.ndarray, labels: list[str], top_k: int) -> list[dict]:
    p = np.asarray(probabilities, dtype=np.float32).ravel()
    k = max(1, min(int(top_k), p.size))
    idx = np.argpartition(-p, k - 1)[:k] if k < p.size else np.arange(p.size)
    idx = idx[np.argsort(-p[idx], kind="stable")]
    return [{"label": labels[i] if i < len(labels) else f"class_{i}", "index": int(i), "score": float(p[i])}
            for i in idx]
