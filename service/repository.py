"""The model repository: `<name>/config.json` + `<name>/<version>/model.{fp32,fp16}.onnx`.

`ModelRepository` lists the models, parses and validates their config.json (model_repository/README.md
is the contract) and resolves a precision to a file whose sha256 it checks.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from enet_serve.service.errors import ModelLoadError

log = logging.getLogger("enet_serve.service.repository")

CONFIG_NAME = "config.json"


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class InputSpec(_Loose):
    name: str = "image"
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    channels: Literal[1, 3] = 3
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    dynamic_size: bool = False
    size_multiple: int = Field(1, ge=1)


class OutputSpec(_Loose):
    name: str
    dtype: str
    shape: list[Any] = Field(default_factory=list)


class FileSpec(_Loose):
    path: str
    sha256: str | None = None
    bytes: int | None = None


class VoidSpec(_Loose):
    index: int
    name: str = "Unlabelled"
    color: list[int] = Field(default_factory=lambda: [0, 0, 0])


class WeightsSpec(_Loose):
    source: str | None = None
    sha256: str | None = None
    trained: bool = False


class ModelConfig(_Loose):
    """config.json of one model. Unknown keys are kept (and shown by GET /models/{name})."""

    name: str
    architecture: str = ""
    task: Literal["segment", "classify"]
    version: int = 1
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    colors: list[list[int]] | None = None
    void: VoidSpec | None = None
    files: dict[str, FileSpec] = Field(min_length=1)
    parameters: int | None = None
    gflops: float | None = None
    reference: dict[str, Any] | None = None
    paper: str | None = None
    weights: WeightsSpec = Field(default_factory=WeightsSpec)
    metrics: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    opset: int | None = None

    @model_validator(mode="after")
    def _consistent(self):
        expected = "mask" if self.task == "segment" else "probabilities"
        if self.outputs[0].name != expected:
            raise ValueError(f"a {self.task} model's first output must be {expected!r}, not {self.outputs[0].name!r}")
        if self.task == "segment" and self.colors is not None:
            for c in self.colors:
                if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                    raise ValueError(f"colors must be [r, g, b] triples of 0..255, got {c}")
        unknown = set(self.files) - {"fp32", "fp16"}
        if unknown:
            raise ValueError(f"files has unknown precisions {sorted(unknown)} (expected fp32, fp16)")
        return self

    # -- what the service needs --------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        n = len(self.labels)
        if self.void is not None and self.void.index >= n:
            n = self.void.index + 1
        return n

    def class_names(self) -> list[str]:
        """Names by class index, the void class included where it has an index past the labels."""
        names = list(self.labels)
        if self.void is not None:
            while len(names) <= self.void.index:
                names.append(f"class_{len(names)}")
            if self.void.index >= len(self.labels):
                names[self.void.index] = self.void.name
        return names

    def palette(self) -> list[tuple[int, int, int]]:
        """A colour per class index (void included); classes without one get a deterministic colour."""
        colors = [tuple(c) for c in (self.colors or [])]
        n = max(self.num_classes, len(colors))
        out = []
        for i in range(n):
            if i < len(colors):
                out.append(colors[i])
            else:  # spread hues for classes without a colour
                out.append(((i * 67) % 256, (i * 151) % 256, (i * 199) % 256))
        if self.void is not None:
            out[self.void.index] = tuple(self.void.color)
        return out


class ModelEntry(BaseModel):
    """A model found in the repository: its directory and parsed config."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    name: str
    directory: Path
    config: ModelConfig

    def file_for(self, precision: str, *, verify: bool = True) -> Path:
        """The ONNX file of `precision` ("fp32" or "fp16"); its size and sha256 are checked against config.json."""
        spec = self.config.files.get(precision)
        if spec is None:
            raise ModelLoadError(f"{self.name}: no {precision} file in config.json (has {sorted(self.config.files)})")
        path = (self.directory / spec.path).resolve()
        if not path.is_relative_to(self.directory.resolve()):
            raise ModelLoadError(f"{self.name}: file path {spec.path!r} leaves the model directory")
        if not path.is_file():
            raise ModelLoadError(f"{self.name}: {precision} file {path} does not exist")
        if verify:
            if spec.bytes is not None and path.stat().st_size != spec.bytes:
                raise ModelLoadError(f"{self.name}: {path.name} has {path.stat().st_size} bytes, config.json says {spec.bytes}")
            if spec.sha256:
                digest = sha256_file(path)
                if digest.lower() != spec.sha256.lower():
                    raise ModelLoadError(f"{self.name}: sha256 of {path.name} is {digest}, config.json says {spec.sha256}")
            else:
                log.warning("%s: config.json has no sha256 for %s; not verified", self.name, path.name)
        return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ModelRepository:
    """A directory of models. Reading is cheap (config.json only); files are verified when resolved."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        # Hidden directories are exports being staged (export/ writes `.NAME.export-*`, then renames it).
        return sorted(p.parent.name for p in self.root.glob(f"*/{CONFIG_NAME}") if not p.parent.name.startswith("."))

    def entry(self, name: str) -> ModelEntry:
        directory = self.root / name
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise ModelLoadError(f"model {name!r} is not in {self.root} (no {path}); found: {', '.join(self.names()) or 'none'}")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path}: cannot read: {e}") from e
        try:
            config = ModelConfig.model_validate(raw)
        except ValidationError as e:
            raise ModelLoadError(f"{path}: invalid config: {e}") from e
        if config.name != name:
            log.warning("%s: config.json says name %r; serving it as %r (the directory name)", path, config.name, name)
        return ModelEntry(name=name, directory=directory, config=config)

    def entries(self, names: list[str] | None = None) -> list[ModelEntry]:
        return [self.entry(n) for n in (names or self.names())]
