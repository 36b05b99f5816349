"""export_model: one architecture + weights -> <repository>/<name>/{config.json, 1/model.fp32.onnx, 1/model.fp16.onnx,
1/model.int8.onnx}."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from torch import nn

from enet_serve.export import checks as checks_mod
from enet_serve.export.errors import ExportError
from enet_serve.export.fp16 import convert_onnx_to_fp16
from enet_serve.export.graph import build_graph_module
from enet_serve.export.onnx_export import OPSET, export_onnx
from enet_serve.export.repository import (DEFAULT_REPOSITORY, FILE_NAMES, VERSION, build_config, check_name, publish, staging,
                               write_config)
from enet_serve.export.weights import Weights, load_into, read_weights
from enet_serve.models.registry import ModelSpec, get_model, get_spec

PRECISIONS = ("fp32", "fp16", "int8")  # int8: quantized from the fp32 graph (export.quantize)
RANDOM_INIT_SEED = 0


@dataclasses.dataclass
class ExportResult:
    path: Path
    config: dict
    checks: list[checks_mod.CheckResult]
    notes: list[str]


def _spec(arch: str) -> ModelSpec:
    try:
        return get_spec(arch)
    except KeyError as e:
        raise ExportError(str(e.args[0]) if e.args else f"unknown model {arch!r}") from None


def _precisions(precisions) -> list[str]:
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",")]
    out = []
    for p in precisions:
        p = str(p).strip().lower()
        if p not in PRECISIONS:
            raise ExportError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
        if p not in out:
            out.append(p)
    if not out:
        raise ExportError("no precision to export")
    if "int8" in out and "fp32" not in out:
        raise ExportError("int8 is quantized from the fp32 graph: export fp32 with it (--precision fp32,int8)")
    return sorted(out, key=PRECISIONS.index)  # FP32 first: the FP16 check compares with it


def build_model(arch: str, spec: ModelSpec, weights: Weights | None, num_classes: int | None,
                builder_args: dict | None = None) -> tuple[nn.Module, int]:
    """The model in eval mode with its weights, and its number of classes. `builder_args` go to the
    architecture's builder (e.g. transform_input=True for torchvision's GoogLeNet/Inception v3 weights)."""
    k = num_classes or (weights.num_classes if weights is not None else None) or spec.num_classes
    kwargs = {**(builder_args or {}), "num_classes": k}
    try:
        if weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)  # the same random-init graph every time
                model = get_model(arch, **kwargs)
        else:
            model = get_model(arch, **kwargs)
    except TypeError as e:
        raise ExportError(f"{arch}: its builder does not take {sorted(builder_args or {})}: {e}") from None
    if weights is not None:
        load_into(model, weights, arch)
    return model.eval(), k


def count_gflops(model: nn.Module, spec: ModelSpec) -> float:
    """Forward GFLOPs at the native size, batch 1 (torch.utils.flop_counter, as models/ counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = spec.input_size
    x = torch.zeros(1, spec.input_channels, h, w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


@contextlib.contextmanager
def torch_threads(n: int):
    """PyTorch with `n` intra-op threads for a while. The export's PyTorch work is small (one traced
    forward per graph, the reference outputs of a few images), and on a shared, busy CPU OpenMP's
    waiting threads made it hundreds of times slower than one thread (ENet, 2 cores: 3.6 s vs 0.012 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def export(arch: str, repository: Path | None = None, name: str | None = None, *, weights: Path | None = None,
           random_init: bool = False, num_classes: int | None = None, precisions=PRECISIONS,
           check: bool = True, fp16_method: str = "torch", builder_args: dict | None = None) -> ExportResult:
    """Like `export_model`, with the check results and notes (for the CLI)."""
    with torch_threads(1):
        return _export(arch, repository, name, weights=weights, random_init=random_init, num_classes=num_classes,
                       precisions=precisions, check=check, fp16_method=fp16_method, builder_args=builder_args)


def _export(arch: str, repository: Path | None, name: str | None, *, weights: Path | None, random_init: bool,
            num_classes: int | None, precisions, check: bool, fp16_method: str,
            builder_args: dict | None) -> ExportResult:
    spec = _spec(arch)
    name = check_name(name or arch)
    repository = Path(repository) if repository is not None else DEFAULT_REPOSITORY
    precisions = _precisions(precisions)
    if (weights is None) == (not random_init):
        raise ExportError("give exactly one of weights=FILE and random_init=True")
    if num_classes is not None and num_classes < 1:
        raise ExportError(f"num_classes must be positive, not {num_classes}")

    loaded = read_weights(Path(weights)) if weights is not None else None
    model, k = build_model(arch, spec, loaded, num_classes, builder_args)
    parameters = sum(p.numel() for p in model.parameters())
    gflops = spec.gflops if spec.gflops > 0 and k == spec.num_classes else count_gflops(model, spec)
    notes: list[str] = []

    h, w = spec.input_size
    if spec.task == "segment":
        # Any size traces the same dynamic graph; a small one traces faster (sides multiples of size_multiple).
        m = max(1, spec.size_multiple)
        h, w = (-(-64 // m) * m, -(-96 // m) * m)
    sample = torch.zeros(1, h, w, spec.input_channels, dtype=torch.uint8)
    output_name = "mask" if spec.task == "segment" else "probabilities"
    metadata = {"name": name, "architecture": arch, "task": spec.task}
    with staging(repository, name) as staged:
        graphs = []
        for precision in (p for p in precisions if p != "int8"):
            path = staged / str(VERSION) / FILE_NAMES[precision]
            module = build_graph_module(model, spec, precision)
            try:
                if precision == "fp16" and fp16_method == "convert":
                    raise NotImplementedError("asked for the onnxconverter-common conversion")
                export_onnx(module, sample, path, output_name=output_name, dynamic_size=spec.task == "segment",
                            metadata={**metadata, "precision": precision})
            except (RuntimeError, NotImplementedError) as e:
                if precision != "fp16" or "fp32" not in precisions:
                    raise ExportError(f"torch.onnx could not export {arch} ({precision}): "
                                      f"{str(e).strip().splitlines()[0][:300]}") from e
                # PyTorch could not trace the model in half on this CPU: convert the FP32 graph instead.
                convert_onnx_to_fp16(staged / str(VERSION) / FILE_NAMES["fp32"], path)
                notes.append(f"fp16: converted from the fp32 graph with onnxconverter-common ({str(e).splitlines()[0][:120]})")
            graphs.append(checks_mod.Graph(precision, path, module))
        results = checks_mod.run_checks(model, spec, k, graphs, trained=loaded is not None) if check else []
        if "int8" in precisions:
            from enet_serve.export.quantize import export_int8

            results += export_int8(staged / str(VERSION) / FILE_NAMES["fp32"], staged / str(VERSION) / FILE_NAMES["int8"],
                                   spec, trained=loaded is not None, check=check)
        config = build_config(name=name, arch=arch, spec=spec, num_classes=k, model_dir=staged,
                              precisions=precisions, parameters=parameters, gflops=gflops, weights=loaded,
                              opset=OPSET)
        if builder_args:
            config["builder_args"] = dict(builder_args)
        write_config(staged, config)
        final = publish(staged, repository, name)
    return ExportResult(final, config, results, notes)


def export_model(arch: str, repository: Path, name: str | None = None, *, weights: Path | None = None,
                 random_init: bool = False, num_classes: int | None = None, precisions=("fp32", "fp16"),
                 check: bool = True, builder_args: dict | None = None) -> Path:
    """Export architecture `arch` to `repository/name` (default name: `arch`); returns the model's directory.

    Exactly one of `weights` (a torchvision .pth or a training checkpoint) and `random_init=True`.
    With `check` (the default) the graphs are checked against PyTorch first (see export.checks);
    nothing is written unless every check passed. `builder_args` go to the architecture's builder
    and are recorded in config.json. Raises WeightsError for weight files that are
    missing, unreadable or do not fit, ExportCheckError for a failed check, ExportError otherwise.
    """
    return export(arch, repository, name, weights=weights, random_init=random_init, num_classes=num_classes,
                  precisions=precisions, check=check, builder_args=builder_args).path
