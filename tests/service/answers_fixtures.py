"""A tiny segmentation model with both outputs of the task table (`mask` and `confidence`), its config.json
written through enet_serve.model_config, for the tests of the segmentation answers (issue 10).

mask = floor(mean over RGB * 12 / 256) (as svc_helpers.seg_graph) and confidence = the red channel, so a
test knows every pixel's class and confidence from the image alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from enet_serve.model_config import (FileSpec, InputSpec, ModelConfig, VoidSpec, WeightsSpec, file_path, sha256_file,
                                     task_outputs)
from svc_helpers import CAMVID_COLORS, CAMVID_LABELS, seg_graph

NUM_CLASSES = 12  # CamVid's 11 and the void class


def seg_confidence_graph(num_classes: int = NUM_CLASSES) -> onnx.ModelProto:
    """svc_helpers.seg_graph plus `confidence` = the red channel: uint8[N,H,W,3] -> mask, confidence
    uint8[N,H,W]; each output ends in a Cast."""
    model = seg_graph(num_classes)
    graph = model.graph
    graph.node.extend([helper.make_node("Gather", ["f", "red"], ["r"], axis=3),
                       helper.make_node("Cast", ["r"], ["confidence"], to=TensorProto.UINT8)])
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "red"))
    graph.output.append(helper.make_tensor_value_info("confidence", TensorProto.UINT8, ["N", "H", "W"]))
    onnx.checker.check_model(model)
    return model


def write_confidence_model(repo: Path, name: str = "seg-confidence", height: int = 120, width: int = 160) -> Path:
    """<repo>/<name>: the graph as fp32 and fp16 files and a config.json built by enet_serve.model_config."""
    directory = repo / name
    files = {}
    for key in ("fp32", "fp16"):
        path = directory / file_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(seg_confidence_graph(), str(path))
        files[key] = FileSpec(path=file_path(key), sha256=sha256_file(path), bytes=path.stat().st_size)
    config = ModelConfig(
        name=name, architecture="tiny-seg-confidence", task="segment",
        input=InputSpec(height=height, width=width, dynamic_size=True, size_multiple=8),
        outputs=task_outputs("segment", ["mask", "confidence"], NUM_CLASSES),
        labels=CAMVID_LABELS, colors=CAMVID_COLORS, void=VoidSpec(index=11, name="Unlabelled"),
        files=files, weights=WeightsSpec(source="test", trained=True))
    (directory / "config.json").write_text(config.to_json())
    return directory


def expected(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's mask and confidence of an HxWx3 image at its own size."""
    mean = rgb.astype(np.float32).mean(axis=2)
    return np.floor(mean * np.float32(NUM_CLASSES / 256.0)).astype(np.uint8), rgb[:, :, 0].copy()
