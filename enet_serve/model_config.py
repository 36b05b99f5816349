"""The model repository's `<name>/config.json`, defined once: export builds and writes it through these
models; the service, `enet-serve eval` and the benchmarks read it through them.

No torch and no FastAPI here (pydantic only), so every package may import it. What it holds:

- the pydantic models of config.json (`ModelConfig` and its parts). They are strict: a key that
  is not defined here is an error that names the key and the file (`load_config`);
- the task table (`TASKS`): per task, the graph outputs with their dtypes and shapes;
- the file layout: `<name>/config.json`, `<name>/<version>/model.<key>.onnx` (`file_path`);
- `sha256_file`, the hash that config.json records for every file;
- the palette for classes without a colour of their own (`fallback_color`).

model_repository/README.md documents the schema from the field descriptions below (`schema_table`);
a test keeps the two in step.
"""
from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_NAME = "config.json"
VERSION = 1  # the version directory export writes (`<name>/1/...`)
# The precisions a model directory may hold, each one ONNX file: `<version>/model.<key>.onnx`.
FILE_KEYS = ("fp32", "fp32_gpu", "fp16", "int8")
FileKey = Literal["fp32", "fp32_gpu", "fp16", "int8"]
TaskName = Literal["segment", "classify"]


def file_name(key: str) -> str:
    """`model.<key>.onnx`, the file of precision `key` (one of FILE_KEYS)."""
    if key not in FILE_KEYS:
        raise ValueError(f"unknown file key {key!r}; expected one of {', '.join(FILE_KEYS)}")
    return f"model.{key}.onnx"


def file_path(key: str, version: int = VERSION) -> str:
    """The path of precision `key`'s file inside a model directory, as config.json records it."""
    return f"{version}/{file_name(key)}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fallback_color(index: int) -> tuple[int, int, int]:
    """A colour for class `index` when the label set has none: PASCAL VOC's bit spreading of index + 1
    (deterministic, distinct, never the black that void classes use)."""
    r = g = b = 0
    c = index + 1
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return (r, g, b)


# -- the task table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """A graph output: its name, dtype and shape. Shape symbols: N (batch), H and W (the input's
    height and width), K (the number of classes)."""

    name: str
    dtype: Literal["uint8", "float32"]
    shape: tuple[str, ...]

    def config_shape(self, num_classes: int) -> list[str | int]:
        """The shape as config.json records it: K is written as the number."""
        return [num_classes if d == "K" else d for d in self.shape]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    outputs: tuple[TensorSpec, ...]  # in graph order; the first one is required, the others optional
    dynamic_size: bool  # the graph takes any H and W (multiples of the model's size multiple)
    colors: bool  # config.json carries a colour per class (and the void class)

    @property
    def primary(self) -> TensorSpec:
        return self.outputs[0]

    def output(self, name: str) -> TensorSpec | None:
        return next((o for o in self.outputs if o.name == name), None)


TASKS: dict[str, TaskSpec] = {
    # The in-graph argmax and the top class's probability x 255.
    "segment": TaskSpec("segment", (TensorSpec("mask", "uint8", ("N", "H", "W")),
                                    TensorSpec("confidence", "uint8", ("N", "H", "W"))),
                        dynamic_size=True, colors=True),
    # The in-graph softmax.
    "classify": TaskSpec("classify", (TensorSpec("probabilities", "float32", ("N", "K")),),
                         dynamic_size=False, colors=False),
}


# -- config.json -----------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputSpec(_Strict):
    name: str = Field("image", description="the graph's input name")
    dtype: Literal["uint8"] = Field("uint8", description="always uint8: the raw image bytes")
    layout: Literal["NHWC"] = Field("NHWC", description="always NHWC")
    channels: Literal[1, 3] = Field(3, description="3 (RGB) or 1 (grey)")
    height: int = Field(gt=0, description="the native input height")
    width: int = Field(gt=0, description="the native input width")
    dynamic_size: bool = Field(False, description="H and W of the graph are dynamic (segmentation)")
    size_multiple: int = Field(1, ge=1, description="when dynamic: the graph pads H and W to multiples of this "
                               "(v2 inputs must be multiples)")
    crop_fraction: float | None = Field(None, gt=0, le=1, description="classifiers evaluated on centre crops: the "
                                        "service resizes the image's shorter side to the native size / crop_fraction "
                                        "and takes the centre at the native size (torchvision's Resize(256) + "
                                        "CenterCrop(224): 0.875); none: the whole image resized to the native size")

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether an HxWxC input of `shape` can go to the graph as it is."""
        if len(shape) != 3 or shape[2] != self.channels:
            return False
        if self.dynamic_size:
            m = self.size_multiple
            return shape[0] > 0 and shape[1] > 0 and shape[0] % m == 0 and shape[1] % m == 0
        return tuple(shape[:2]) == (self.height, self.width)


class OutputSpec(_Strict):
    name: str = Field(description="a graph output of the task table")
    dtype: str = Field(description="its dtype (uint8, float32)")
    shape: list[str | int] = Field(description="symbolic dims N, H, W; K written as the number of classes")


class Normalization(_Strict):
    mean: list[float] = Field(description="per channel, of pixels scaled to 0..1 (applied inside the graph)")
    std: list[float] = Field(description="per channel (applied inside the graph)")


class FileSpec(_Strict):
    path: str = Field(description="relative to the model directory: `<version>/model.<precision>.onnx`")
    sha256: str | None = Field(None, description="checked by the service before loading")
    bytes: int | None = Field(None, description="the file's size")


class VoidSpec(_Strict):
    index: int = Field(description="the mask value of unlabelled pixels")
    name: str = Field("Unlabelled", description="its class name")
    color: list[int] = Field(default_factory=lambda: [0, 0, 0], description="its colour")


class Reference(_Strict):
    metric: str = Field(description="top1, mIoU, ...")
    value: float
    dataset: str
    source: str | None = None


class WeightsSpec(_Strict):
    source: str | None = Field(None, description="the weights file exported (relative to the checkout)")
    sha256: str | None = Field(None, description="of the weights file")
    trained: bool = Field(False, description="false: random weights; the service refuses them unless allow_untrained")


class ExporterVersions(_Strict):
    torch: str
    onnx: str
    onnxruntime: str


class ModelConfig(_Strict):
    """config.json of one model."""

    name: str = Field(description="the model's name (the service serves it under its directory's name)")
    architecture: str = Field("", description="the registered architecture (`enet-serve models`)")
    task: TaskName = Field(description="`segment` or `classify`: which task table entry the outputs follow")
    version: int = Field(VERSION, description="the version directory holding the files")
    input: InputSpec = Field(description="the graph's one input, uint8[N, H, W, C]")
    outputs: list[OutputSpec] = Field(
        min_length=1, description="the graph's outputs, in order: the task's first output, then optional ones")
    normalization: Normalization | None = Field(None, description="done inside the graph; the service pads "
                                                "native-size images with the mean colour, as the graph pads")
    labels: list[str] = Field(min_length=1, description="class names by index")
    colors: list[list[int]] | None = Field(None, description="segmentation: an [r, g, b] per label")
    void: VoidSpec | None = Field(None, description="segmentation: the unlabelled class, when the label set has one")
    files: dict[str, FileSpec] = Field(min_length=1, description=f"by precision ({', '.join(FILE_KEYS)})")
    parameters: int | None = Field(None, description="the model's parameter count")
    gflops: float | None = Field(None, description="forward GFLOPs at the native size, batch 1")
    reference: Reference | None = Field(
        None, description="the architecture's published accuracy: `metric`, `value`, `dataset`, `source`")
    paper: str | None = Field(None, description="where the architecture comes from")
    weights: WeightsSpec = Field(default_factory=WeightsSpec, description="what was exported")
    metrics: dict[str, Any] | None = Field(None, description="trained models: scores by split (from the checkpoint)")
    training: dict[str, Any] | None = Field(
        None, description="trained models: commands and the code each ran (`code_versions`, git describe), recipe, "
                         "epochs, time, hardware; `held_out_estimates`: each run of the recipe with a drive held "
                         "out, scored on that drive; `initialised_from` for fine-tuning")
    builder_args: dict[str, Any] | None = Field(
        None, description="arguments given to the architecture's builder at export (`--set KEY=VALUE`), if any")
    opset: int | None = Field(None, description="the ONNX opset")
    exporter: ExporterVersions | None = Field(
        None, description="the versions of `torch`, `onnx` and `onnxruntime` that exported it")

    @model_validator(mode="after")
    def _consistent(self):
        task = TASKS[self.task]
        if self.outputs[0].name != task.primary.name:
            raise ValueError(f"a {self.task} model's first output must be {task.primary.name!r}, "
                             f"not {self.outputs[0].name!r}")
        for out in self.outputs:
            spec = task.output(out.name)
            if spec is None:
                raise ValueError(f"output {out.name!r} is not an output of a {self.task} model "
                                 f"(expected {', '.join(o.name for o in task.outputs)})")
            if out.dtype != spec.dtype:
                raise ValueError(f"output {out.name!r} must be {spec.dtype}, not {out.dtype}")
            if len(out.shape) != len(spec.shape) or any(
                    d != s for d, s in zip(out.shape, spec.shape) if s != "K"):
                raise ValueError(f"output {out.name!r} must have shape {list(spec.shape)}, not {out.shape}")
        if self.colors is not None:
            for c in self.colors:
                if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                    raise ValueError(f"colors must be [r, g, b] triples of 0..255, got {c}")
        unknown = set(self.files) - set(FILE_KEYS)
        if unknown:
            raise ValueError(f"files has unknown precisions {sorted(unknown)} (expected {', '.join(FILE_KEYS)})")
        return self

    # -- what readers need ---------------------------------------------------------------------------------
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
        """A colour per class index (void included); classes without one get `fallback_color`."""
        colors = [tuple(c) for c in (self.colors or [])]
        n = max(self.num_classes, len(colors))
        out = [colors[i] if i < len(colors) else fallback_color(i) for i in range(n)]
        if self.void is not None:
            out[self.void.index] = tuple(self.void.color)
        return out

    def output_shape(self, name: str) -> list[int]:
        """An output's shape with -1 for the dimensions that vary (N, and H and W of dynamic-size models)."""
        out = next((o for o in self.outputs if o.name == name), None)
        if out is None:
            raise KeyError(f"{self.name}: no output {name!r} in config.json")
        sides = {"H": self.input.height, "W": self.input.width}
        shape = []
        for d in out.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d in sides and not self.input.dynamic_size:
                shape.append(sides[d])
            else:
                shape.append(-1)
        return shape

    def to_json(self, default: Callable[[Any], Any] | None = None) -> str:
        """config.json's text: the keys that were given, in this schema's order. `default` turns the
        values of the free-form records (metrics, training) that JSON does not know into ones it does."""
        return json.dumps(self.model_dump(exclude_unset=True), indent=2, default=default) + "\n"


def task_outputs(task: str, names: list[str], num_classes: int) -> list[OutputSpec]:
    """config.json's `outputs` for a graph of `task` whose outputs are `names` (in graph order)."""
    spec = TASKS[task]
    outputs = []
    for name in names:
        out = spec.output(name)
        if out is None:
            raise ValueError(f"a {task} graph has no output {name!r} (expected {', '.join(o.name for o in spec.outputs)})")
        outputs.append(OutputSpec(name=out.name, dtype=out.dtype, shape=out.config_shape(num_classes)))
    return outputs


class ModelConfigError(ValueError):
    """A config.json that cannot be read or does not follow the schema; the message names the file."""


def _describe_error(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    return f"{where}: {error['msg']}"


def parse_config(raw: Any, source: Path | str = CONFIG_NAME) -> ModelConfig:
    """A ModelConfig from parsed JSON; ModelConfigError names `source` and every key at fault."""
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(_describe_error(err) for err in e.errors())
        raise ModelConfigError(f"{source}: invalid config: {problems}") from None


def load_config(path: Path) -> ModelConfig:
    """Read and validate a config.json (or the config.json of model directory `path`)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"{path}: cannot read: {e}") from e
    return parse_config(raw, path)


# -- the documentation of the schema -------------------------------------------------------------------

def schema_table() -> str:
    """The Markdown table of config.json's keys with their descriptions (model_repository/README.md)."""
    rows = ["| key | type | |", "|---|---|---|"]

    def add(model: type[BaseModel], prefix: str) -> None:
        for key, field in model.model_fields.items():
            optional = "" if field.is_required() else " (optional)"
            rows.append(f"| `{prefix}{key}` | {_type_name(field.annotation)}{optional} | {field.description or ''} |")
            nested, joint = _nested_model(field.annotation)
            if nested is not None and nested not in (Reference, ExporterVersions):
                add(nested, f"{prefix}{key}{joint}")

    add(ModelConfig, "")
    return "\n".join(rows) + "\n"


def _nested_model(annotation) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds (itself, in a list or as a dict's values) and how its keys are written."""
    def is_model(t) -> bool:
        return isinstance(t, type) and issubclass(t, BaseModel)

    for candidate in (annotation, *typing.get_args(annotation)):
        origin, args = typing.get_origin(candidate), typing.get_args(candidate)
        if is_model(candidate):
            return candidate, "."
        if origin is list and args and is_model(args[0]):
            return args[0], "[]."
        if origin is dict and args and is_model(args[1]):
            return args[1], ".<precision>."
    return None, ""


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"object of {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, "any")
