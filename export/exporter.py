"""export_model: one architecture + weights -> <repository>/<name>/{config.json, 1/model.<key>.onnx}.

The files: `fp32` (for CPUs), `fp16` (for GPUs) and, where the FP32 graph carries CPU-only rewrites
(ENet's PReLU as convolutions), `fp32_gpu`: the FP32 graph without them, for GPUs; `int8` (for
CPUs): statically quantized from the `fp32` graph by export.quantize.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from torch import nn

from enet_serve.export import checks as checks_mod
from enet_serve.export.errors import ExportError
from enet_serve.export.fp16 import convert_onnx_to_fp16
from enet_serve.export.graph import build_graph_module, cpu_rewrites_apply
from enet_serve.export.onnx_export import OPSET, export_onnx
from enet_serve.export.repository import (DEFAULT_REPOSITORY, FILE_NAMES, VERSION, build_config, check_name, publish, staging,
                               write_config)
from enet_serve.export.weights import AUX_HEAD_PREFIXES, Weights, load_into, read_weights
from enet_serve.model_config import TASKS
from enet_serve.models.registry import ModelSpec, get_model, get_spec
from enet_serve.models.weight_init import calibrate_batch_norms_
from enet_serve.training.common import Normalize

PRECISIONS = ("fp32", "fp16", "int8")  # int8: quantized from the fp32 graph (export.quantize)
DEFAULT_PRECISIONS = ("fp32", "fp16")  # int8 on request: it needs calibration data and a gate
RANDOM_INIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How to export one model (everything but which architecture, where and under what name)."""
    weights: Path | None = None  # a torchvision .pth or a training checkpoint ...
    random_init: bool = False  # ... or random weights: exactly one of the two
    num_classes: int | None = None  # default: the checkpoint's, else the architecture's
    precisions: tuple[str, ...] | str = DEFAULT_PRECISIONS  # of PRECISIONS (a tuple or "fp32,fp16,int8")
    check: bool = True  # the checks against PyTorch (the file's own checks always run)
    fp16_method: str = "torch"  # "torch": trace the model in half; "convert": onnxconverter-common
    builder_args: dict | None = None  # arguments of the architecture's builder, recorded in config.json
    int8_ungated: bool = False  # INT8 of trained weights without the data set to calibrate and gate it on


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


def num_classes_of(spec: ModelSpec, weights: Weights | None, num_classes: int | None) -> int:
    """The model's classes: as asked, else the checkpoint's, else the architecture's."""
    return num_classes or (weights.num_classes if weights is not None else None) or spec.num_classes


def build_model(arch: str, spec: ModelSpec, weights: Weights | None, num_classes: int | None,
                builder_args: dict | None = None) -> tuple[nn.Module, int]:
    """The model in eval mode with its weights, and its number of classes. `builder_args` go to the
    architecture's builder (e.g. transform_input=True for torchvision's GoogLeNet/Inception v3 weights)."""
    k = num_classes_of(spec, weights, num_classes)
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
        dropped = load_into(model, weights, arch)
        if dropped and hasattr(model, "transform_input") and "transform_input" not in (builder_args or {}):
            # torchvision's files carry the aux heads, and their weights (ported from TensorFlow) expect inputs
            # in [-1, 1], which transform_input makes; without it the export would pass its checks and be wrong.
            raise ExportError(f"{weights.path}: {arch} weights with auxiliary heads, as torchvision's ImageNet "
                              "weights have, which need --set transform_input=true (as torchvision's builder sets "
                              "it); say --set transform_input=false if these were trained without it")
    else:
        calibrate_batch_norms_(model, _random_batches(spec))
    return model.eval(), k


def _random_batches(spec: ModelSpec, batches: int = 1, size: int = 4):
    """Normalised random images at the native size (the same every export) for random weights' batch norms."""
    g = torch.Generator().manual_seed(RANDOM_INIT_SEED)
    h, w = spec.input_size
    for _ in range(batches):
        images = torch.randint(0, 256, (size, h, w, spec.input_channels), dtype=torch.uint8, generator=g)
        yield Normalize(spec)(images.permute(0, 3, 1, 2))


def count_parameters(model: nn.Module) -> int:
    """The parameters the graph holds: auxiliary heads (GoogLeNet / Inception v3 with --set aux_logits=true)
    train only, and the exported graph (eval) has none of theirs."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(AUX_HEAD_PREFIXES))


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
    waiting threads made it hundreds of times slower than one thread (BENCHMARKS.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _graphs_to_write(model: nn.Module, precisions: list[str]) -> list[str]:
    """The graph files for `precisions`: with FP32, also `fp32_gpu` (the FP32 graph without the
    CPU-only rewrites, for GPUs) where the model has such rewrites; FP32 first (the FP16 check
    compares with it)."""
    keys = list(precisions)
    if "fp32" in keys and cpu_rewrites_apply(model):
        keys.insert(keys.index("fp32") + 1, "fp32_gpu")
    return keys


def export(arch: str, repository: Path | None = None, name: str | None = None,
           options: ExportOptions | None = None, **fields) -> ExportResult:
    """Like `export_model`, with the check results and notes (for the CLI). The options as an
    `ExportOptions` or as its fields (`weights=...`, `random_init=True`, ...), not both."""
    if options is not None and fields:
        raise ExportError(f"give options or {', '.join(sorted(fields))}, not both")
    try:
        options = options or ExportOptions(**fields)
    except TypeError as e:
        raise ExportError(str(e)) from None
    with torch_threads(1):
        return _export(arch, repository, name, options)


def _export(arch: str, repository: Path | None, name: str | None, options: ExportOptions) -> ExportResult:
    spec = _spec(arch)
    name = check_name(name or arch)
    repository = Path(repository) if repository is not None else DEFAULT_REPOSITORY
    precisions = _precisions(options.precisions)
    if (options.weights is None) == (not options.random_init):
        raise ExportError("give exactly one of weights=FILE and random_init=True")
    if options.num_classes is not None and options.num_classes < 1:
        raise ExportError(f"num_classes must be positive, not {options.num_classes}")

    loaded = read_weights(Path(options.weights)) if options.weights is not None else None
    if "int8" in precisions and loaded is not None and not options.int8_ungated:
        from enet_serve.export import quantize

        if not quantize.gateable(spec):
            quantize.refuse_ungated(spec, arch)
    k = num_classes_of(spec, loaded, options.num_classes)
    if spec.task == "segment" and k > 256:
        raise ExportError(f"{arch} with {k} classes: a segmentation graph's mask is uint8 (the contract), "
                          "so it holds at most 256 classes")
    model, k = build_model(arch, spec, loaded, options.num_classes, options.builder_args)
    parameters = count_parameters(model)
    # The registry's figure is the default network's: counted again where --set or K changed it.
    gflops = (spec.gflops if spec.gflops > 0 and k == spec.num_classes and not options.builder_args
              else count_gflops(model, spec))
    notes: list[str] = []

    h, w = spec.input_size
    if spec.task == "segment":
        # Any size traces the same dynamic graph; a small one traces faster (sides multiples of size_multiple).
        m = max(1, spec.size_multiple)
        h, w = (-(-64 // m) * m, -(-96 // m) * m)
    sample = torch.zeros(1, h, w, spec.input_channels, dtype=torch.uint8)
    metadata = {"name": name, "architecture": arch, "task": spec.task}
    keys = _graphs_to_write(model, [p for p in precisions if p != "int8"])  # int8 comes from the fp32 graph
    with staging(repository, name) as staged:
        graphs = []
        for key in keys:
            path = staged / str(VERSION) / FILE_NAMES[key]
            module = build_graph_module(model, spec, key)
            try:
                if key == "fp16" and options.fp16_method == "convert":
                    raise NotImplementedError("asked for the onnxconverter-common conversion")
                export_onnx(module, sample, path, output_names=module.output_names,
                            dynamic_size=TASKS[spec.task].dynamic_size, metadata={**metadata, "precision": key})
            except (RuntimeError, NotImplementedError) as e:
                if key != "fp16" or "fp32" not in keys:
                    raise ExportError(f"torch.onnx could not export {arch} ({key}): "
                                      f"{str(e).strip().splitlines()[0][:300]}") from e
                # PyTorch could not trace the model in half on this CPU: convert an FP32 graph instead
                # (the GPU one where there is one: FP16 graphs are for GPUs).
                source = "fp32_gpu" if "fp32_gpu" in keys else "fp32"
                convert_onnx_to_fp16(staged / str(VERSION) / FILE_NAMES[source], path)
                notes.append(f"fp16: converted from the {source} graph with onnxconverter-common "
                             f"({str(e).splitlines()[0][:120]})")
            graphs.append(checks_mod.Graph(key, path, module))
        results = (checks_mod.run_checks(model, spec, k, graphs, trained=loaded is not None) if options.check
                   else checks_mod.run_structure_checks(spec, k, graphs))
        if "int8" in precisions:
            from enet_serve.export.quantize import export_int8

            results += export_int8(staged / str(VERSION) / FILE_NAMES["fp32"], staged / str(VERSION) / FILE_NAMES["int8"],
                                   spec, trained=loaded is not None, check=options.check)
            keys.append("int8")
        config = build_config(name=name, arch=arch, spec=spec, num_classes=k, model_dir=staged,
                              precisions=keys, parameters=parameters, gflops=gflops, weights=loaded,
                              opset=OPSET)
        if options.builder_args:
            config["builder_args"] = dict(options.builder_args)
        write_config(staged, config)
        final = publish(staged, repository, name)
    return ExportResult(final, config, results, notes)


def export_model(arch: str, repository: Path, name: str | None = None, **options) -> Path:
    """Export architecture `arch` to `repository/name` (default name: `arch`); returns the model's directory.

    `options` are ExportOptions' fields: exactly one of `weights` (a torchvision .pth or a training
    checkpoint) and `random_init=True`; `num_classes`, `precisions`, `check`, `builder_args`.
    With `check` (the default) the graphs are checked against PyTorch first (see export.checks);
    nothing is written unless every check passed. `builder_args` go to the architecture's builder
    and are recorded in config.json. Raises WeightsError for weight files that are
    missing, unreadable or do not fit, ExportCheckError for a failed check, ExportError otherwise.
    """
    return export(arch, repository, name, **options).path
