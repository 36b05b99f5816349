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
- enet_serve_class_pixels_ratio{model, class}          (histogram: per image, the share of its pixels of the class)
- enet_serve_mean_confidence_ratio{model}             (histogram: per image, the mean confidence, 0..1)
- enet_serve_stream_frames_total{model, result}       (stream frames: answered, dropped, failed)
- enet_serve_stream_connections{model}                (gauge: open /segment/stream connections)
- enet_serve_stream_rejected_total{reason}            (stream connections closed at the start: too_many, ...)
plus the process_* and python_* collectors. No `_created` series: prometheus-client would add one
(the creation timestamp) to every counter and histogram child, which no dashboard reads.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

from enet_serve.service.batching import BatchObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0,
                   10.0, 30.0)
# Drift: a class that jumps between these shares (a camera that sees only Sky) moves whole buckets.
RATIO_BUCKETS = (0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)
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
        # drift: what each model sees, per image (label sets: model and class, both bounded by the repository)
        self.class_pixels = Histogram(f"{ns}_class_pixels_ratio", "per image, the share of its pixels of each class",
                                      ["model", "class"], buckets=RATIO_BUCKETS, registry=r)
        self.mean_confidence = Histogram(f"{ns}_mean_confidence_ratio", "per image, the mean per-pixel confidence",
                                         ["model"], buckets=CONFIDENCE_BUCKETS, registry=r)
        # the video stream (WS /segment/stream)
        self.stream_frames = Counter(f"{ns}_stream_frames", "stream frames by result: answered, dropped (a newer "
                                     "frame replaced it), failed (an error message answered it)",
                                     ["model", "result"], registry=r)
        self.stream_connections = Gauge(f"{ns}_stream_connections", "open stream connections", ["model"], registry=r)
        self.stream_rejected = Counter(f"{ns}_stream_rejected", "stream connections closed at the start, by reason",
                                       ["reason"], registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def observer(self, model: str) -> "ModelObserver":
        return ModelObserver(self, model)

    def drift(self, model: str, classes: Sequence[str], confidence: bool) -> "DriftObserver":
        return DriftObserver(self, model, classes, confidence)

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


class DriftObserver:
    """One segmentation model's drift histograms (label children looked up once); `observe` runs in the
    codec threads (prometheus-client's children are thread-safe)."""

    def __init__(self, metrics: Metrics, model: str, classes: Sequence[str], confidence: bool):
        self._classes = [metrics.class_pixels.labels(model, name) for name in classes]
        # only models with a confidence output have the series (an empty one would read as "no images")
        self._confidence = metrics.mean_confidence.labels(model) if confidence else None

    def observe(self, mask: np.ndarray, confidence: np.ndarray | None) -> None:
        """One image's mask (and confidence) as the model answered it, before any filter of the request."""
        counts = np.bincount(mask.ravel(), minlength=len(self._classes))
        total = max(1, mask.size)
        for child, count in zip(self._classes, counts):
            child.observe(count / total)
        if confidence is not None and self._confidence is not None:
            self._confidence.observe(float(confidence.mean()) / 255.0)
