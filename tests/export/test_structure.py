"""export.structure: TensorRT's UINT8 rule and exact comparisons, on hand-built graphs and real exports."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from enet_serve.export import ExportCheckError, export_model
from enet_serve.export.structure import inexact_comparisons, uint8_rule_violations


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _image():
    return helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])


def _mask():
    return helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W"])


def _good_nodes():
    return [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT, name="cast_in"),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("ArgMax", ["nchw"], ["index"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["index"], ["index_f"], to=TensorProto.FLOAT, name="index_to_float"),
        helper.make_node("Cast", ["index_f"], ["mask"], to=TensorProto.UINT8, name="cast_out"),
    ]


def test_a_graph_that_follows_the_rule_passes():
    assert uint8_rule_violations(_model(_good_nodes(), [_image()], [_mask()])) == []


def test_transposing_the_uint8_input_before_casting_is_refused():
    nodes = [
        helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="/pre/Transpose"),
        helper.make_node("Cast", ["t"], ["x"], to=TensorProto.FLOAT, name="/pre/Cast"),
        helper.make_node("ArgMax", ["x"], ["index"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["index"], ["index_f"], to=TensorProto.FLOAT, name="index_to_float"),
        helper.make_node("Cast", ["index_f"], ["mask"], to=TensorProto.UINT8, name="cast_out"),
    ]
    problems = uint8_rule_violations(_model(nodes, [_image()], [_mask()]))
    assert any("'/pre/Transpose'" in p and "'image'" in p for p in problems)
    assert any("'/pre/Transpose_output_0'" in p or "'t'" in p for p in problems)


def test_an_output_sliced_after_the_uint8_cast_is_refused():
    """The old post-processing: ArgMax, Cast to uint8, then reshape/crop the uint8 tensor."""
    starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("ends", TensorProto.INT64, [1], [10])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT, name="cast_in"),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("ArgMax", ["nchw"], ["index"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["index"], ["mask_u8"], to=TensorProto.UINT8, name="/post/Cast"),
        helper.make_node("Slice", ["mask_u8", "starts", "ends", "axes"], ["mask"], name="/post/Slice"),
    ]
    problems = uint8_rule_violations(_model(nodes, [_image()], [_mask()], [starts, ends, axes]))
    assert any("'/post/Cast'" in p and "'mask_u8'" in p and "not a graph output" in p for p in problems)
    assert any("'/post/Slice'" in p and "'mask'" in p and "not by a Cast" in p for p in problems)


def test_casting_an_integer_index_straight_to_uint8_is_refused():
    nodes = _good_nodes()[:3] + [helper.make_node("Cast", ["index"], ["mask"], to=TensorProto.UINT8, name="idx")]
    (problem,) = uint8_rule_violations(_model(nodes, [_image()], [_mask()]))
    assert "'idx'" in problem and "INT64" in problem and "'mask'" in problem


def test_comparisons_must_read_float32():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])
    y = helper.make_tensor_value_info("y", TensorProto.BOOL, [2])
    model = _model([helper.make_node("Less", ["x", "x"], ["y"], name="lt")], [x], [y])
    assert inexact_comparisons(model) == ["Less node 'lt' compares 'x', which is FLOAT16, not FLOAT"] * 2
    x32 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    assert inexact_comparisons(_model([helper.make_node("Less", ["x", "x"], ["y"], name="lt")], [x32], [y])) == []


def test_an_export_that_breaks_the_rule_is_refused(tmp_path, monkeypatch):
    import enet_serve.export.graph as graph

    def transpose_bytes_first(self, image):  # the pre-processing of the first shipped graphs
        return (image.permute(0, 3, 1, 2).float() - self.mean) / self.std

    monkeypatch.setattr(graph._Preprocess, "forward", transpose_bytes_first)
    with pytest.raises(ExportCheckError, match=r"FP32 uint8 rule: Transpose node .* reads uint8 tensor 'image'"):
        export_model("lenet5", tmp_path, random_init=True, precisions=("fp32",))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["enet-camvid", "lenet5-fashion"])
def test_the_shipped_graphs_follow_the_rule(name):
    from enet_serve.model_config import load_config
    from enet_serve.paths import DEFAULT_REPOSITORY

    config = load_config(DEFAULT_REPOSITORY / name)
    for key, entry in config.files.items():
        if key == "int8":  # a CPU graph (QuantizeLinear's zero points are uint8): TensorRT never reads it
            continue
        model = onnx.load(str(DEFAULT_REPOSITORY / name / entry.path))
        assert uint8_rule_violations(model) == [], f"{name} {key}"
        if key == "fp16":
            assert inexact_comparisons(model) == [], f"{name} {key}"


