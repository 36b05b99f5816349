"""The loaded models and the request pipelines: decode (codec threads) -> batcher -> encode (codec threads).

What decode and encode do is the model's task handler's (service/tasks); `ModelServer` keeps the
start-up, the shutdown, the lookup of models and the pipeline between the two ends.

`ModelServer.load()` reads the repository, verifies and opens every configured model (a failure
stops the start, as Triton does, unless `exit_on_error` is off: then the model is kept as a
`ModelFault`, its routes answer 503 naming it, and the others serve); `start()` starts the batchers
and warms every model in the background, so `/health/live` answers at once and `/health/ready`
turns 200 only once all the working models are warm (and 503 again once the server drains).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from enet_serve.service import timing
from enet_serve.service.batching import Batcher
from enet_serve.service.errors import InvalidParameter, ModelFailed, ModelLoadError, ModelNotFound, NotReady
from enet_serve.service.faults import ModelFault, fault_of
from enet_serve.service.lifecycle import Lifecycle
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
    failed: dict[str, str] = field(default_factory=dict)  # model -> its fault (exit_on_error off)


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
            "execution": rt.describe(),
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
    def __init__(self, settings: Settings, metrics: Metrics, lifecycle: Lifecycle | None = None):
        self.settings = settings
        self.metrics = metrics
        self.lifecycle = lifecycle or Lifecycle()
        self.models: dict[str, LoadedModel] = {}
        self.faults: dict[str, ModelFault] = {}  # models that failed to load or warm up
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
        for name in names:
            try:
                self._load_one(repo, name)
            except Exception as e:
                if s.exit_on_error:
                    raise
                self._record_fault(fault_of(name, "load", e, repo.root / name / "config.json"))

    def _load_one(self, repo: ModelRepository, name: str) -> None:
        s = self.settings
        entry = repo.entry(name)
        if not entry.config.weights.trained and not s.allow_untrained:
            raise ModelLoadError(
                f"{entry.name}: config.json says weights.trained: false (random weights); refusing to serve it. "
                "Export trained weights, or start with --allow-untrained / ENET_SERVE_ALLOW_UNTRAINED=1",
                path=entry.directory / "config.json")
        runtime = ModelRuntime.load(entry, s)
        loaded = LoadedModel(entry, runtime, s)
        loaded.handler.bind_metrics(self.metrics)
        self.models[entry.name] = loaded
        self.metrics.model_ready.labels(entry.name).set(0)
        self.metrics.model_info.labels(entry.name, entry.config.task, runtime.provider, runtime.precision).set(1)

    def _record_fault(self, fault: ModelFault) -> None:
        """exit_on_error off: keep serving the others; the fault shows in the log, /models, 503s and /metrics."""
        self.faults[fault.name] = fault
        log.error("%s; exit_on_error is off: serving the other models without it", fault.message)
        self.metrics.model_ready.labels(fault.name).set(0)
        self.metrics.model_failed.labels(fault.name, fault.stage).set(1)

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
        self._warm_task.add_done_callback(self._warm_ended)

    async def _warm_all(self) -> None:
        for m in self.models.values():
            try:
                await self._warm_one(m)
            except Exception as e:
                log.exception("%s: warm-up failed", m.name)
                fault = fault_of(m.name, "warm-up", e, m.runtime.path)
                if self.settings.exit_on_error:
                    self.warm_error = fault.message
                    self.lifecycle.stop_fatally(fault.message)
                    return
                self._record_fault(fault)

    async def _warm_one(self, m: LoadedModel) -> None:
        """Warm one model, tune its batch size and mark it ready; anything raised here is its fault."""
        loop = asyncio.get_running_loop()
        s = self.settings
        served = s.warm_batch_sizes == "served"
        if not served:  # every size first; the tuning then times the serving session itself
            seconds = await loop.run_in_executor(None, warm_model, m, list(range(1, s.max_batch_size + 1)))
        if s.tune_batch_size and s.max_batch_size > 1:
            # served: on a temporary session, so that the large batches it times leave no
            # buffers in the serving sessions' arenas.
            m.batch_rates = await loop.run_in_executor(None, functools.partial(
                m.runtime.measure_batches, m.input_shape, tuning_candidates(s.max_batch_size),
                settings=s if served else None))
            m.batch_size = pick_batch_size(m.batch_rates)
            assert m.batcher is not None
            m.batcher.max_batch_size = m.batch_size
        top = m.batch_size if served else s.max_batch_size
        if served:
            seconds = await loop.run_in_executor(None, warm_model, m, list(range(1, top + 1)))
        log.info("%s: warm (batch sizes 1..%d) in %.2f s; batches of up to %d (measured images/s: %s)", m.name,
                 top, seconds, m.batch_size,
                 ", ".join(f"{b}: {r:.1f}" for b, r in (m.batch_rates or {}).items()) or "not measured")
        m.ready = True
        self.metrics.model_ready.labels(m.name).set(1)

    def _warm_ended(self, task: asyncio.Task) -> None:
        """A warm-up that died outside any one model's handling would leave the server not ready with
        nothing said: log it, let readiness give the reason, and stop when errors are fatal."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("warm-up stopped: %r", error, exc_info=error)
        self.warm_error = f"warm-up stopped: {error!r}"
        if self.settings.exit_on_error:
            self.lifecycle.stop_fatally(self.warm_error)

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
        """Every working model is warm (failed ones aside: exit_on_error off), and the server is not draining."""
        working = [m for name, m in self.models.items() if name not in self.faults]
        return bool(working) and all(m.ready for m in working) and not self.lifecycle.draining

    def readiness(self) -> Readiness:
        """The one answer to "is the server ready?", for /health/ready and /v2/health/ready."""
        models = {name: self.models[name].ready if name in self.models else False
                  for name in sorted({*self.models, *self.faults})}
        failed = {name: fault.message for name, fault in sorted(self.faults.items())}
        if self.ready:
            return Readiness(True, models, failed=failed)
        if self.lifecycle.draining:
            reason = "draining: the server is shutting down"
        elif self.warm_error:
            reason = self.warm_error
        elif self.faults and all(name in self.faults for name in models):
            reason = "no model works: " + "; ".join(failed.values())
        else:
            waiting = [n for n, ok in models.items() if not ok and n not in self.faults]
            reason = f"warming up: {', '.join(waiting) or 'loading'}"
        return Readiness(False, models, reason, failed)

    # -- lookup ----------------------------------------------------------------------------------------
    def default_name(self, task: str) -> str | None:
        wanted = HANDLERS[task].default_model(self.settings)
        if wanted in self.models and self.models[wanted].task == task:
            return wanted
        if wanted in self.faults and wanted not in self.models:
            return wanted  # the default failed to load: its requests hear why (503) rather than "no model"
        same = sorted(n for n, m in self.models.items() if m.task == task)
        return same[0] if same else None

    def get(self, name: str | None, task: str | None = None) -> LoadedModel:
        if name is None:
            assert task is not None
            name = self.default_name(task)
            if name is None:
                raise ModelNotFound(f"no {HANDLERS[task].word} model is loaded")
        model = self.models.get(name)
        if model is None and name in self.faults:
            raise ModelFailed(self.faults[name].message, retry_after=30)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}; loaded: {', '.join(sorted(self.models)) or 'none'}")
        if task is not None and model.task != task:
            raise InvalidParameter(f"model {name!r} is a {model.handler.word} model; use {model.handler.route}",
                                   code="wrong_task")
        return model

    def ensure_ready(self, model: LoadedModel) -> LoadedModel:
        if model.name in self.faults:
            raise ModelFailed(self.faults[model.name].message, retry_after=30)
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
        rows = await model.batcher.submit_rows([np.ascontiguousarray(x) for x in batch])
        return {name: np.stack([r[i] for r in rows]) for i, name in enumerate(model.runtime.output_names)}


def warm_model(model: LoadedModel, batch_sizes: list[int]) -> float:
    return model.runtime.warm([model.input_shape], batch_sizes)
