"""export.quantize: the INT8 graph, its calibration and its accuracy gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from enet_serve.export import ExportCheckError, ExportError, quantize
from enet_serve.export.exporter import export
from enet_serve.models.registry import get_spec
from enet_serve.paths import DEFAULT_FASHION_MNIST, WEIGHTS_DIR

LENET_WEIGHTS = WEIGHTS_DIR / "lenet5-fashion.pth"
needs_fashion_mnist = pytest.mark.skipif(not (DEFAULT_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                         reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def lenet_int8(tmp_path_factory):
    if not (DEFAULT_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed")
    return export("lenet5", tmp_path_factory.mktemp("int8"), "lenet5-fashion", weights=LENET_WEIGHTS,
                  precisions=("fp32", "int8"))


def test_int8_export_is_quantized_gated_and_recorded(lenet_int8):
    names = {r.name: r for r in lenet_int8.checks}
    assert {"INT8 calibration", "INT8 contract", "INT8 top-1 vs FP32"} <= set(names)
    assert "Fashion-MNIST train" in names["INT8 calibration"].detail
    config = json.loads((lenet_int8.path / "config.json").read_text())
    assert config["files"]["int8"]["path"] == "1/model.int8.onnx"
    graph = onnx.load(str(lenet_int8.path / "1" / "model.int8.onnx")).graph
    assert any(n.op_type == "QLinearConv" for n in graph.node)  # QOperator form, not QDQ
    # the probabilities come from a float Softmax, not in 1/256 steps out of a QLinearSoftmax
    ops = {n.op_type for n in graph.node}
    assert "Softmax" in ops and "QLinearSoftmax" not in ops
    session = ort.InferenceSession(str(lenet_int8.path / "1" / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"image": np.zeros((3, 32, 32, 1), np.uint8)})[0]
    assert probs.shape == (3, 10) and probs.dtype == np.float32


@needs_fashion_mnist
def test_gate_refuses_a_graph_calibrated_on_black_frames(lenet_int8, tmp_path):
    """Calibrated on all-black images, every activation range collapses: the gate must say no."""
    spec = get_spec("lenet5")
    fp32 = lenet_int8.path / "1" / "model.fp32.onnx"
    bad = tmp_path / "bad.int8.onnx"
    quantize.quantize(fp32, bad, np.zeros((8, 32, 32, 1), np.uint8), "classify")
    with pytest.raises(ExportCheckError, match="INT8 top-1 vs FP32"):
        quantize.gate(fp32, bad, spec, trained=True)


def test_gate_refuses_a_graph_with_another_signature(lenet_int8, tmp_path):
    fp32 = lenet_int8.path / "1" / "model.fp32.onnx"
    other = onnx.load(str(lenet_int8.path / "1" / "model.int8.onnx"))
    other.graph.output[0].name = "scores"
    for node in other.graph.node:
        node.output[:] = ["scores" if o == "probabilities" else o for o in node.output]
    onnx.save(other, str(tmp_path / "renamed.onnx"))
    with pytest.raises(ExportCheckError, match="INT8 contract"):
        quantize.gate(fp32, tmp_path / "renamed.onnx", get_spec("lenet5"), trained=True)


def test_int8_needs_the_fp32_graph(tmp_path):
    with pytest.raises(ExportError, match="quantized from the fp32 graph"):
        export("lenet5", tmp_path, random_init=True, precisions=("int8",))


def test_untrained_int8_is_checked_for_answers_only(tmp_path):
    result = export("lenet5", tmp_path, random_init=True, precisions=("fp32", "int8"))
    answers = next(r for r in result.checks if r.name == "INT8 answers")
    assert answers.passed and "not gated (random weights)" in answers.detail
    # the quantizer copies the FP32 graph's metadata; the file says what it is
    meta = {p.key: p.value for p in onnx.load(str(result.path / "1" / "model.int8.onnx")).metadata_props}
    assert meta["precision"] == "int8"


def test_trained_int8_without_its_data_set_is_refused_unless_ungated(tmp_path, monkeypatch):
    """Without Fashion-MNIST nothing calibrates or gates trained LeNet's INT8 graph: the export stops
    before writing anything, naming the data set and the way out; --int8-ungated writes it, said so."""
    from enet_serve.cli import main
    from enet_serve.export import checks

    monkeypatch.setattr(checks, "FASHION_MNIST_DIR", tmp_path / "no-fashion-mnist")
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="Fashion-MNIST.*--int8-ungated"):
        export("lenet5", repo, "lenet5-fashion", weights=LENET_WEIGHTS, precisions=("fp32", "int8"))
    assert not repo.exists() or not any(repo.iterdir())
    assert main(["export", "lenet5", "--name", "lenet5-fashion", "--weights", str(LENET_WEIGHTS),
                 "--precision", "fp32,int8", "--int8-ungated", "--no-check", "--repository", str(repo)]) == 0
    result = export("lenet5", repo, "lenet5-fashion", weights=LENET_WEIGHTS, precisions=("fp32", "int8"),
                    int8_ungated=True)
    answers = next(r for r in result.checks if r.name == "INT8 answers")
    assert answers.passed and "--int8-ungated" in answers.detail
    calibration = next(r for r in result.checks if r.name == "INT8 calibration")
    assert "no dataset found" in calibration.detail


def test_segment_gate_scores_miou_and_mask_agreement(tmp_path, monkeypatch):
    """ENet's gate on a two-frame CamVid: mIoU of both graphs and the share of equal mask pixels."""
    from enet_serve.export import checks

    root = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)).save(root / split / f"0001TP_{i}.png")
            Image.fromarray(rng.integers(0, 12, (360, 480), dtype=np.uint8)).save(root / f"{split}annot" / f"0001TP_{i}.png")
            lines.append(f"{split}/0001TP_{i}.png {split}annot/0001TP_{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(checks, "CAMVID_DIR", root)
    spec = get_spec("enet")
    result = export("enet", tmp_path / "repo", "enet-small", random_init=True, precisions=("fp32",), check=False)
    fp32 = result.path / "1" / "model.fp32.onnx"
    images, source = quantize.calibration_images(spec, trained=True)
    assert source.startswith("CamVid train") and images.shape == (2, 360, 480, 3)
    quantize.quantize(fp32, tmp_path / "enet.int8.onnx", images, "segment")
    # the network is quantized up to its last layer; that layer and the post-processing are float
    graph = onnx.load(str(tmp_path / "enet.int8.onnx")).graph
    assert sum(n.op_type == "QLinearConv" for n in graph.node) > 50
    producers = {o: n for n in graph.node for o in n.output}
    scores = [n for n in graph.node if n.op_type == "ArgMax"][-1].input[0]
    while producers[scores].op_type == "Reshape":
        scores = producers[scores].input[0]
    assert producers[scores].op_type == "Conv"
    downstream = _ops_from_scores(graph, "ArgMax")
    assert {"ArgMax", "Exp", "ReduceSum"} <= set(downstream)
    assert not [op for op in downstream if op.startswith("QLinear") or op in ("QuantizeLinear", "DequantizeLinear")]
    fp32_s, int8_s = quantize._session(fp32), quantize._session(tmp_path / "enet.int8.onnx")
    miou, masks, confidence = quantize._segment_gate(fp32_s, int8_s, spec)
    assert miou.name == "INT8 val mIoU" and "2 frames" in miou.detail
    assert masks.name == "INT8 masks vs FP32" and "% of pixels equal" in masks.detail
    assert confidence.name == "INT8 confidence vs FP32" and "within 16 of FP32's" in confidence.detail


def _ops_from_scores(graph: onnx.GraphProto, op: str) -> list[str]:
    """The op types of the nodes that read the input of the graph's last `op` node, and of all after them."""
    scores = [n for n in graph.node if n.op_type == op][-1].input[0]
    seen, frontier, ops = set(), [scores], []
    while frontier:
        name = frontier.pop()
        for node in graph.node:
            if name in node.input and node.name not in seen:
                seen.add(node.name)
                ops.append(node.op_type)
                frontier.extend(node.output)
    return ops
