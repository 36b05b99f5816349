"""Rules on an exported graph's structure, checked on the ONNX file alone (no session, no PyTorch).

- `uint8_rule_violations`: TensorRT's UINT8 rule. TensorRT takes uint8 only as a network input or
  output, and only directly next to a Cast to or from float32/float16 (onnx-tensorrt's operator
  table; NVIDIA/TensorRT issues 3985 and 4278). So the uint8 input's only consumers are Casts to
  float, each uint8 output is made by a Cast from float, and no other tensor is uint8.
- `inexact_comparisons`: the comparison nodes (ENet's unpooling finds each 2x2 window's first
  maximum with `Less` and `Equal`) whose inputs are not float32. In an FP16 graph they must compare
  float32 copies of float16 values: exact whatever precision a GPU runtime picks for them, since
  every float16 value is a float32 value and rounding it to float16 again changes nothing.

Each function returns one line per problem, naming the node and the tensor at fault.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto

FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
COMPARISON_OPS = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal")


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)


def _node_name(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type is known after ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    graph = inferred.graph
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
        elif node.op_type == "Cast":
            types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
    return types


def uint8_rule_violations(model: onnx.ModelProto) -> list[str]:
    """The places where `model` breaks TensorRT's UINT8 rule (see the module's docstring)."""
    graph = model.graph
    types = tensor_types(model)
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    problems: list[str] = []

    for node in graph.node:
        for name in node.input:
            if name and types.get(name) == TensorProto.UINT8:
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if node.op_type != "Cast":
                    problems.append(f"{_node_name(node)} reads uint8 tensor {name!r}; only a Cast to float may")
                elif to not in FLOATS:
                    problems.append(f"{_node_name(node)} casts uint8 tensor {name!r} to {_type_name(to)}, "
                                    "not to FLOAT or FLOAT16")
                elif name not in inputs:
                    problems.append(f"{_node_name(node)} reads uint8 tensor {name!r}, which is not a graph input")
        for name in node.output:
            if types.get(name) != TensorProto.UINT8:
                continue
            if name not in outputs:
                problems.append(f"{_node_name(node)} makes uint8 tensor {name!r}, which is not a graph output")
            elif node.op_type != "Cast":
                problems.append(f"uint8 output {name!r} is made by {_node_name(node)}, not by a Cast")
            else:
                source = types.get(node.input[0])
                if source not in FLOATS:
                    what = _type_name(source) if source else "an unknown type"
                    problems.append(f"uint8 output {name!r} is cast by {_node_name(node)} from {what} "
                                    f"({node.input[0]!r}), not from FLOAT or FLOAT16")
    for name in sorted(outputs & inputs):
        if types.get(name) == TensorProto.UINT8:
            problems.append(f"uint8 input {name!r} is also an output")
    for out in graph.output:
        if types.get(out.name) == TensorProto.UINT8 and out.name not in producers and out.name not in inputs:
            problems.append(f"uint8 output {out.name!r} is made by no node")
    for init in graph.initializer:
        if init.data_type == TensorProto.UINT8:
            problems.append(f"initializer {init.name!r} is uint8")
    return problems


def inexact_comparisons(model: onnx.ModelProto) -> list[str]:
    """Comparison nodes with an input that is not float32 (see the module's docstring)."""
    types = tensor_types(model)
    problems = []
    for node in model.graph.node:
        if node.op_type not in COMPARISON_OPS:
            continue
        for name in node.input:
            if types.get(name) != TensorProto.FLOAT:
                what = _type_name(types[name]) if name in types else "an unknown type"
                problems.append(f"{_node_name(node)} compares {name!r}, which is {what}, not FLOAT")
    return problems


def count_ops(model: onnx.ModelProto, ops: tuple[str, ...]) -> int:
    return sum(node.op_type in ops for node in model.graph.node)
