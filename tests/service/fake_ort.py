"""A stand-in for onnxruntime-gpu on a machine without a GPU, for the service's provider logic.

`FakeOrt(available=[...], outcomes={provider: outcome})` lists `available` as onnxruntime-gpu does
(whatever the machine has) and decides what a session asked for `provider` (its first provider) does:

- "ok" (the default): the session reports the providers it was asked for;
- a provider name: the session quietly lands there (what onnxruntime-gpu does when TensorRT's or
  CUDA's libraries are missing) and reports it first;
- an exception instance: creating the session raises it (e.g. `EPFail`, which is no RuntimeError).

The sessions compute with the real CPU onnxruntime, so answers are real. `OrtValue`s with a device
are NumPy arrays that count their allocations and copies; `created` records every session asked
for (file, providers with options, session options).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as real_ort

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class EPFail(Exception):
    """onnxruntime's EPFail: an execution provider failed (it derives from Exception, not RuntimeError)."""


@dataclass
class Created:
    path: str
    providers: list[tuple[str, dict]]
    options: Any  # the real SessionOptions given
    reported: list[str] = field(default_factory=list)

    @property
    def asked(self) -> str:
        return self.providers[0][0]


class FakeOrtValue:
    allocations = 0
    uploads = 0
    downloads = 0

    def __init__(self, array: np.ndarray, device: str):
        self.array = array
        self.device = device

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape, dtype, device: str = "cpu", device_id: int = 0) -> "FakeOrtValue":
        FakeOrtValue.allocations += 1
        return cls(np.zeros(shape, dtype), device)

    @classmethod
    def ortvalue_from_numpy(cls, array: np.ndarray, device: str = "cpu", device_id: int = 0) -> "FakeOrtValue":
        FakeOrtValue.allocations += 1
        FakeOrtValue.uploads += 1
        return cls(np.array(array), device)

    def update_inplace(self, array: np.ndarray) -> None:
        if array.shape != self.array.shape or array.dtype != self.array.dtype:
            raise ValueError(f"update_inplace: {array.dtype}{array.shape} into {self.array.dtype}{self.array.shape}")
        FakeOrtValue.uploads += 1
        self.array[...] = array

    def numpy(self) -> np.ndarray:
        FakeOrtValue.downloads += 1
        return self.array.copy()

    def shape(self):
        return list(self.array.shape)


class FakeBinding:
    def __init__(self):
        self.inputs: dict[str, FakeOrtValue] = {}
        self.outputs: dict[str, FakeOrtValue] = {}

    def bind_ortvalue_input(self, name: str, value: FakeOrtValue) -> None:
        self.inputs[name] = value

    def bind_ortvalue_output(self, name: str, value: FakeOrtValue) -> None:
        self.outputs[name] = value


class FakeSession:
    def __init__(self, fake: "FakeOrt", path: str, sess_options=None, providers=None):
        providers = [(p, {}) if isinstance(p, str) else tuple(p) for p in (providers or [CPU])]
        record = Created(str(path), [(n, dict(o)) for n, o in providers], sess_options)
        fake.created.append(record)
        asked = [n for n, _ in providers]
        outcome = fake.outcomes.get(asked[0], "ok")
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "ok":
            reported = asked
        else:  # a quiet fallback: onnxruntime drops the providers before `outcome`
            reported = asked[asked.index(outcome):] if outcome in asked else [outcome]
        record.reported = reported
        self._providers = reported
        self._real = real_ort.InferenceSession(str(path), providers=[CPU])
        self.runs = 0

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def get_inputs(self):
        return self._real.get_inputs()

    def get_outputs(self):
        return self._real.get_outputs()

    def run(self, names, feed):
        self.runs += 1
        return self._real.run(names, feed)

    def io_binding(self) -> FakeBinding:
        return FakeBinding()

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.runs += 1
        feed = {name: value.array for name, value in binding.inputs.items()}
        names = list(binding.outputs)
        for name, result in zip(names, self._real.run(names, feed)):
            target = binding.outputs[name].array
            if result.shape != target.shape or result.dtype != target.dtype:
                raise ValueError(f"output {name}: {result.dtype}{result.shape} into a buffer of {target.dtype}{target.shape}")
            target[...] = result


class FakeOrt:
    """The parts of the onnxruntime module that the service uses."""

    EPFail = EPFail

    def __init__(self, available: list[str], outcomes: dict[str, Any] | None = None, version: str = "1.99.0"):
        self.available = list(available)
        self.outcomes = dict(outcomes or {})
        self.__version__ = version
        self.created: list[Created] = []
        self.preloaded = 0
        self.SessionOptions = real_ort.SessionOptions
        self.GraphOptimizationLevel = real_ort.GraphOptimizationLevel
        self.ExecutionMode = real_ort.ExecutionMode
        self.OrtValue = FakeOrtValue
        FakeOrtValue.allocations = FakeOrtValue.uploads = FakeOrtValue.downloads = 0

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def preload_dlls(self) -> None:
        self.preloaded += 1

    def InferenceSession(self, path, sess_options=None, providers=None):  # noqa: N802 - onnxruntime's name
        return FakeSession(self, path, sess_options, providers)

    def asked(self) -> list[str]:
        """The first provider of every session asked for, in order."""
        return [c.asked for c in self.created]
