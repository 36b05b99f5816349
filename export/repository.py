"""The model repository side of an export: config.json, built and written through the one schema
(enet_serve.model_config), and moving a finished model directory into place.

A model is assembled in a hidden temporary directory inside the repository (same filesystem) and
renamed to `<repository>/<name>` only when every file is written and every check passed; a
model that was there before is replaced whole. A failed export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime
import torch

from enet_serve.export.errors import ExportError
from enet_serve.model_config import (FILE_KEYS, TASKS, VERSION, ModelConfig, ModelConfigError, fallback_color,
                                     file_name, file_path, parse_config, sha256_file, task_outputs)
from enet_serve.models.labels import load_label_set
from enet_serve.models.registry import ModelSpec
from enet_serve.paths import DEFAULT_REPOSITORY, REPO_ROOT  # noqa: F401  (export.cli and the exporter take it from here)

FILE_NAMES = {key: file_name(key) for key in FILE_KEYS}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ExportError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (not starting with '.' or '-')")
    return name


def label_fields(spec: ModelSpec, num_classes: int) -> dict:
    """labels (and colors, void for segmentation) for `num_classes` outputs."""
    label_set = load_label_set(spec.labels)
    labels = list(label_set["labels"])
    fields: dict = {}
    if len(labels) == num_classes:
        fields["labels"] = labels
        colors = label_set.get("colors")
    else:  # a model trained for another number of classes than its label set has
        fields["labels"] = [f"class_{i}" for i in range(num_classes)]
        colors = None
    if TASKS[spec.task].colors:
        fields["colors"] = [list(c) for c in colors] if colors and len(colors) == num_classes \
            else [list(fallback_color(i)) for i in range(num_classes)]
        void = label_set.get("void")
        if void is not None and len(labels) == num_classes:
            fields["void"] = {"index": void["index"], "name": void["name"], "color": list(void["color"])}
    return fields


def _source(path: Path) -> str:
    path = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return path.relative_to(REPO_ROOT).as_posix()
    return str(path)


def graph_outputs(path: Path) -> list[str]:
    """The output names of an exported ONNX file, in graph order."""
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def build_config(*, name: str, arch: str, spec: ModelSpec, num_classes: int, model_dir: Path,
                 precisions: list[str], parameters: int, gflops: float, weights, opset: int) -> dict:
    """config.json for the model assembled in `model_dir` (files already written there), validated
    by the schema; its outputs are the task table's entries for the outputs the graph has."""
    h, w = spec.input_size
    fields: dict = {
        "name": name,
        "architecture": arch,
        "task": spec.task,
        "version": VERSION,
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": spec.input_channels,
                  "height": h, "width": w, "dynamic_size": TASKS[spec.task].dynamic_size,
                  "size_multiple": int(spec.size_multiple),
                  **({"crop_fraction": spec.crop_fraction} if spec.crop_fraction else {})},
        "outputs": [o.model_dump() for o in task_outputs(
            spec.task, graph_outputs(model_dir / file_path(precisions[0])), num_classes)],
        "normalization": {"mean": [float(m) for m in spec.mean], "std": [float(s) for s in spec.std]},
        **label_fields(spec, num_classes),
        "files": {},
        "parameters": int(parameters),
        "gflops": round(float(gflops), 6),
        "reference": dict(spec.reference),
        "paper": spec.paper,
        "weights": ({"source": _source(weights.path), "sha256": weights.sha256, "trained": True}
                    if weights is not None else {"source": None, "sha256": None, "trained": False}),
    }
    for precision in precisions:
        rel = file_path(precision)
        path = model_dir / rel
        fields["files"][precision] = {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if weights is not None and weights.metrics is not None:
        fields["metrics"] = weights.metrics
    if weights is not None and weights.training is not None:
        fields["training"] = weights.training
    fields["opset"] = opset
    fields["exporter"] = {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
                          "onnxruntime": onnxruntime.__version__}
    return _validated(fields, model_dir).model_dump(exclude_unset=True)


def _validated(fields: dict, model_dir: Path) -> ModelConfig:
    try:
        return parse_config(fields, model_dir / "config.json")
    except ModelConfigError as e:  # a bug of the exporter, or a model spec the schema does not allow
        raise ExportError(str(e)) from None


def write_config(model_dir: Path, config: dict) -> Path:
    """Validate `config` by the schema and write it as `model_dir/config.json`."""
    path = model_dir / "config.json"
    path.write_text(_validated(config, model_dir).to_json(default=_json_default))
    return path


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


@contextlib.contextmanager
def staging(repository: Path, name: str) -> Iterator[Path]:
    """A temporary model directory in `repository`; removed unless `publish` moved it into place."""
    repository.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=repository))
    try:
        (tmp / str(VERSION)).mkdir()
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, repository: Path, name: str) -> Path:
    """Move the staged directory to `repository/name`, replacing an older export of that name."""
    final = repository / name
    # mkdtemp made it owner-only: give it the permissions of an ordinary directory (umask applies).
    umask = os.umask(0)
    os.umask(umask)
    for d in [staged, *(p for p in staged.rglob("*") if p.is_dir())]:
        d.chmod(0o777 & ~umask)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=repository))
        os.rename(final, old / "model")
    try:
        os.rename(staged, final)
    except OSError:
        if old is not None:  # put the previous export back
            os.rename(old / "model", final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final
