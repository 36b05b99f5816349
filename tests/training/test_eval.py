"""`enet-serve eval` reproduces the shipped models' recorded scores, in PyTorch and both ONNX graphs."""
import json

import pytest

from enet_serve.cli import main
from enet_serve.paths import DEFAULT_CAMVID, DEFAULT_FASHION_MNIST, DEFAULT_REPOSITORY as SHIPPED


def _recorded(name: str) -> dict:
    return json.loads((SHIPPED / name / "config.json").read_text())["metrics"]


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_eval_reproduces_lenet5_fashion(tmp_path, capsys):
    assert main(["eval", "lenet5-fashion", "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "pytorch" in out and "onnx-fp32" in out and "onnx-fp16" in out
    results = json.loads((tmp_path / "report.json").read_text())["results"]
    recorded = _recorded("lenet5-fashion")["test"]["top1"]
    assert results["pytorch"]["top1"] == recorded >= 90.0
    assert results["onnx-fp32"]["top1"] == pytest.approx(recorded, abs=0.02)
    assert results["onnx-fp16"]["top1"] == pytest.approx(recorded, abs=0.1)


@pytest.mark.skipif(not (DEFAULT_CAMVID / "val.txt").is_file(), reason="no ../shared/datasets/camvid")
def test_eval_reproduces_enet_camvid(tmp_path, capsys):
    assert main(["eval", "enet-camvid", "--confusions", "--json", str(tmp_path / "report.json")]) == 0
    assert "where each class's pixels went (onnx-fp32" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["split"] == "val" and report["images"] == 101
    recorded = _recorded("enet-camvid")["val"]
    results = report["results"]
    assert results["pytorch"]["mIoU"] == pytest.approx(recorded["mIoU"], abs=0.01)
    assert results["onnx-fp32"]["mIoU"] == pytest.approx(recorded["mIoU"], abs=0.05)
    assert results["onnx-fp16"]["mIoU"] == pytest.approx(recorded["mIoU"], abs=0.3)
    assert set(results["pytorch"]["per_class_iou"]) == {"Sky", "Building", "Pole", "Road", "Pavement", "Tree",
                                                         "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"}
    confusions = report["confusions"]
    assert confusions["runtime"] == "onnx-fp32" and set(confusions["classes"]) == set(results["pytorch"]["per_class_iou"])
    for name, c in confusions["classes"].items():  # recall, and what is left of the class's pixels goes elsewhere
        assert c["recall"] + sum(c["mistaken_for"].values()) <= 100.01, (name, c)
        assert all(other != name and share >= 1.0 for other, share in c["mistaken_for"].items()), (name, c)


def test_eval_of_a_model_not_in_the_repository(tmp_path, capsys):
    assert main(["eval", "nothing-here", "--repository", str(tmp_path)]) == 2
    assert "nothing-here" in capsys.readouterr().out
