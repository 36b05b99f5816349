"""Prometheus metrics, in a CollectorRegistry of the app's own (so several apps in one process do not collide).

Names follow the Prometheus conventions (base units in the name, `_total` on counters):

- enet_serve_requests_total{model, route, status}
- enet_serve_request_duration_seconds{model, route}  (histogram)
- enet_serve_queue_wait_seconds{model}                (histogram: enqueue -> batch start)
- enet_serve_inference_duration_seconds{model}        (histogram: one batch in onnxruntime)
- enet_serve_batch_size{model}                        (histogram)
- enet_serve_batches_total{model, instance}           (batches run per instance: 0, 1, ... or solo)
- enet_serve_decode_duration_seconds{model}           (histogram: decode + resize)
- enet_serve_queue_depth{model}                       (gauge)
- enet_serve_model_ready{model}                       (gauge, 1 when loaded and warmed)
- enet_serve_model_failed{model, stage}              (gauge, 1 when it failed to load or warm up; exit_on_error off)
- enet_serve_deadline_exceeded_total{model}
- enet_serve_model_info{model, provider, precision, task} (gauge, always 1)
plus the process_* and python_* collectors. No `_created` series: prometheus-client would add one
(the creation timestamp) to every counter and histogram child, which no dashboard reads.
"""
from __future__ import annotations

from typing import Sequence

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

from enet_serve.service.batching import BatchObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0,
                   10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

disable_created_metrics()  # process-wide in prometheus-client; the service owns its process


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "enet_serve"):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.requests = Counter(f"{ns}_requests", "HTTP requests by model, route and status",
                                ["model", "route", "status"], registry=r)
        self.request_duration = Histogram(f"{ns}_request_duration_seconds", "HTTP request latency",
                                          ["model", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(f"{ns}_queue_wait_seconds", "time from enqueue to the start of its batch",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram(f"{ns}_inference_duration_seconds", "onnxruntime time of one batch",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{ns}_batch_size", "requests per batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batches = Counter(f"{ns}_batches", "batches run, by model instance (0, 1, ... or solo)",
                               ["model", "instance"], registry=r)
        self.decode = Histogram(f"{ns}_decode_duration_seconds", "decode and resize of one input image",
                                ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(f"{ns}_queue_depth", "requests waiting for a batch", ["model"], registry=r)
        self.model_ready = Gauge(f"{ns}_model_ready", "1 when the model is loaded and warmed", ["model"], registry=r)
        self.model_failed = Gauge(f"{ns}_model_failed", "1 when the model failed to load or warm up (stage)",
                                  ["model", "stage"], registry=r)
        self.deadline_exceeded = Counter(f"{ns}_deadline_exceeded", "requests whose deadline passed in the queue",
                                         ["model"], registry=r)
        self.model_info = Gauge(f"{ns}_model_info", "the execution provider and precision in use",
                                ["model", "task", "provider", "precision"], registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def observer(self, model: str) -> "ModelObserver":
        return ModelObserver(self, model)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ModelObserver(BatchObserver):
    """The batcher's hooks, bound to one model's label children (looked up once)."""

    def __init__(self, metrics: Metrics, model: str):
        self._depth = metrics.queue_depth.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._inference = metrics.inference.labels(model)
        self._wait = metrics.queue_wait.labels(model)
        self._expired = metrics.deadline_exceeded.labels(model)
        self._batches = metrics.batches
        self._model = model

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def batch(self, size: int, inference_s: float, waits_s: Sequence[float], instance: str = "0") -> None:
        self._batches.labels(self._model, instance).inc()
        self._batch.observe(size)
        self._inference.observe(inference_s)
        for w in waits_s:
            self._wait.observe(w)

    def expired(self) -> None:
        self._expired.inc()
