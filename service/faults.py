"""A model that failed to load or warm up, kept (with `exit_on_error` off) so that the server can say
which file failed and why: in the log, in GET /models, in the 503 of its routes and in /metrics."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Stage = Literal["load", "warm-up"]


@dataclass(frozen=True)
class ModelFault:
    name: str
    stage: Stage
    file: str  # the file at fault (config.json or the ONNX file), as the server resolved it
    reason: str

    @property
    def message(self) -> str:
        return f"model {self.name} failed to {'load' if self.stage == 'load' else 'warm up'} ({self.file}): {self.reason}"

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "stage": self.stage, "file": self.file, "reason": self.reason}


def fault_of(name: str, stage: Stage, error: BaseException, fallback_file: Path | str) -> ModelFault:
    """The fault of `error`, naming the file the error carries (ModelLoadError.path) or `fallback_file`."""
    file = getattr(error, "path", None) or fallback_file
    reason = str(error) or type(error).__name__
    return ModelFault(name=name, stage=stage, file=str(file), reason=reason)
