"""torch.onnx export of a graph module (see export.graph) to one .onnx file.

The TorchScript-based exporter (`dynamo=False`) is used: it traces the wrapper with symbolic batch,
height and width and gives a compact graph with dynamic H/W. torch.export (`dynamo=True`) cannot
yet reason about the symbolic sizes of the in-graph padding and of the 2x2-window reshapes
("cannot be solved using solve_univariate_inequality"), which a segmentation graph of any size needs.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17
INPUT_NAME = "image"


def export_onnx(module: nn.Module, sample: torch.Tensor, path: Path, *, output_names: list[str], dynamic_size: bool,
                metadata: dict[str, str] | None = None, opset: int = OPSET) -> onnx.ModelProto:
    """Export `module` (uint8 NHWC in, `output_names` out) to `path`; returns the checked ONNX model."""
    input_axes = {0: "N", 1: "H", 2: "W"} if dynamic_size else {0: "N"}
    output_axes = {0: "N", 1: "H", 2: "W"} if dynamic_size else {0: "N"}
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter's deprecation notice and the tracer's notes on Python ints are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(
            module, (sample,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(output_names),
            dynamic_axes={INPUT_NAME: input_axes, **{name: output_axes for name in output_names}},
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    model.producer_name = "enet-serve"
    model.producer_version = f"torch {torch.__version__}"
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model
