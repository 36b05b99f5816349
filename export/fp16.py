"""FP16 graphs: the model computes in float16; the uint8 input and the outputs keep their dtypes.

The FP16 graph is exported from the model converted to half in PyTorch (`build_graph_module(...,
"fp16")`): the wrapper normalises in float32, casts once to float16 before the first layer, and
its outputs are uint8 (argmax) or float32 (softmax in float32). This gives exactly the graph that
was designed, with batch norms folded in float32 first.

Where PyTorch cannot trace the model in half on this CPU (an op without a Half CPU kernel), the
FP32 graph is converted with onnxconverter-common instead (`convert_onnx_to_fp16`), keeping the
I/O types. That converter retypes the tensors that Cast nodes produce to float16 but leaves the
Cast nodes' `to` attribute at float32, a graph onnxruntime refuses to load ("Type (tensor(float16))
of output arg ... does not match expected type (tensor(float))"); those Casts are fixed here and
the result must load in onnxruntime.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from enet_serve.export.structure import COMPARISON_OPS

# Ops that stay in float32 in a converted graph: the converter's defaults (Resize, Range, TopK, ...,
# whose extra inputs must stay float32), the reductions of the output heads, and comparisons (exact on
# float32 copies of float16 values, which export.structure.inexact_comparisons checks).
EXTRA_FP32_OPS = ["ArgMax", "Softmax", *COMPARISON_OPS]


def _fix_cast_targets(model: onnx.ModelProto) -> int:
    """Set Cast(to=FLOAT) to FLOAT16 where the converter retyped its output to float16; returns the count."""
    types = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "Cast":
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT and types.get(node.output[0]) == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT16
                fixed += 1
    return fixed


def _restore_output_types(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """keep_io_types does not hold for an output produced by a blocked op (the converter casts it to
    float16 after the op): set such an output's Cast, and the output, back to the original type."""
    before = {o.name: o.type.tensor_type.elem_type for o in original.graph.output}
    producers = {out: node for node in converted.graph.node for out in node.output}
    for output in converted.graph.output:
        want = before.get(output.name)
        if want is None or output.type.tensor_type.elem_type == want:
            continue
        node = producers.get(output.name)
        if node is None or node.op_type != "Cast":
            raise ValueError(f"fp16 conversion changed output {output.name!r} to another type")
        for attr in node.attribute:
            if attr.name == "to":
                attr.i = want
        output.type.tensor_type.elem_type = want


def convert_onnx_to_fp16(src: Path, dst: Path) -> onnx.ModelProto:
    """The FP32 graph at `src` converted to float16 (I/O types kept) and written to `dst`."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + EXTRA_FP32_OPS)
    _fix_cast_targets(converted)
    _restore_output_types(model, converted)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    return converted
