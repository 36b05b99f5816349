"""The loaded models and the request pipelines: decode (codec threads) -> batcher -> encode (codec threads).

What decode and encode do is the model's task handler's (service/tasks); `ModelServer` keeps the
start-up, the shutdown, the lookup of models and the pipeline between the two ends.

`ModelServer.load()` reads the repository, verifies and opens every configured model (a failure
stops the start, as Triton does); `start()` starts the batchers and warms every model in the
background, so `/health/live` answers at once and `/health/ready` turns 200 only once all are warm.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from enet_serve.service import timing
from enet_serve.service.batching import Batcher
from enet_serve.service.errors import InvalidParameter, ModelLoadError, ModelNotFound, NotReady
from enet_serve.service.metrics import Metrics
from enet_serve.service.repository import ModelConfig, ModelEntry, ModelRepository
from enet_serve.service.runtime import ModelRuntime, pick_batch_size, tuning_candidates
from enet_serve.service.settings import Settings
from enet_serve.service.tasks import HANDLERS, Answer, Prepared, Task, handler_for

log = logging.getLogger("service")


@dataclass(frozen=True)
class Readiness:
    """Whether every model is loaded and warm; why not, for the probes."""

    ready: bool
    models: dict[str, bool]
    reason: str | None = None


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
        self.task = self.config.task
        self.handler: Task = handler_for(self.name, self.config, settings)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.handler.input_shape

    def describe(self) -> dict[str, Any]:
        cfg, s, rt, names = self.config, self.settings, self.runtime, self.handler.class_names
        return {
            "name": self.name,
            "task": cfg.task,
            "architecture": cfg.architecture,
            "version": cfg.version,
            "ready": self.ready,
            "labels": names,
            "num_classes": len(names),
            "input": cfg.input.model_dump(),
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
                         "native_size": self.handler.native_size},
            "warmup_s": rt.warmup_s,
            **self.handler.describe(),
        }


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

    def readiness(self) -> Readiness:
        """The one answer to "is the server ready?", for /health/ready and /v2/health/ready."""
        models = {name: m.ready for name, m in sorted(self.models.items())}
        if self.ready:
            return Readiness(True, models)
        waiting = [n for n, ok in models.items() if not ok]
        return Readiness(False, models, self.warm_error or f"warming up: {', '.join(waiting) or 'loading'}")

    # -- lookup ----------------------------------------------------------------------------------------
    def default_name(self, task: str) -> str | None:
        wanted = HANDLERS[task].default_model(self.settings)
        if wanted in self.models and self.models[wanted].task == task:
            return wanted
        same = sorted(n for n, m in self.models.items() if m.task == task)
        return same[0] if same else None

    def get(self, name: str | None, task: str | None = None) -> LoadedModel:
        if name is None:
            assert task is not None
            name = self.default_name(task)
            if name is None:
                raise ModelNotFound(f"no {HANDLERS[task].word} model is loaded")
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}; loaded: {', '.join(sorted(self.models)) or 'none'}")
        if task is not None and model.task != task:
            raise InvalidParameter(f"model {name!r} is a {model.handler.word} model; use {model.handler.route}",
                                   code="wrong_task")
        return model

    def ensure_ready(self, model: LoadedModel) -> LoadedModel:
        if not model.ready or model.batcher is None:
            raise NotReady(f"model {model.name} is still loading (warming up); retry shortly", retry_after=2)
        return model

    def ready_model(self, name: str | None, task: str | None = None) -> LoadedModel:
        return self.ensure_ready(self.get(name, task))

    async def codec(self, fn: Callable, *args, **kwargs):
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self.codec_pool, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self.codec_pool, fn, *args)

    # -- pipelines ---------------------------------------------------------------------------------------
    async def infer_image(self, model: LoadedModel, data: bytes,
                          keep_original: bool = False) -> tuple[Prepared, dict[str, np.ndarray]]:
        """Decode (codec thread) and run one image through the batcher: the decoded request and the
        model's outputs for it, by output name."""
        assert model.batcher is not None
        with model.batcher.announce() as announcement:
            prepared = await self.codec(model.handler.prepare, data, keep_original)
            announcement.done()
            self.metrics.decode.labels(model.name).observe(prepared.decode_s)
            timing.record("decode", prepared.decode_s)
            outputs = await model.batcher.submit(prepared.array, key=prepared.key)
        return prepared, dict(zip(model.runtime.output_names, outputs))

    async def answer(self, model: LoadedModel, data: bytes, options: Any) -> Answer:
        """One image in, the task's answer out: decode -> batcher -> encode (the codec threads at both ends)."""
        handler = model.handler
        prepared, outputs = await self.infer_image(model, data, handler.wants_original(options))
        with timing.span("encode"):
            return await self.codec(handler.encode, prepared, outputs, options)

    async def infer_tensor(self, model: LoadedModel, batch: np.ndarray) -> dict[str, np.ndarray]:
        """v2 infer: every row of an NxHxWxC uint8 batch through the batcher; outputs stacked back, by name."""
        assert model.batcher is not None
        rows = await asyncio.gather(*(model.batcher.submit(np.ascontiguousarray(x), key=x.shape) for x in batch))
        return {name: np.stack([r[i] for r in rows]) for i, name in enumerate(model.runtime.output_names)}


def warm_model(model: LoadedModel, batch_sizes: list[int]) -> float:
    return model.runtime.warm([model.input_shape], batch_sizes)
