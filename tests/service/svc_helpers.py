"""Test helpers of the service suite: tiny contract-following ONNX graphs, a repository writer, test images.

The graphs follow model_repository/README.md (uint8 NHWC `image` in, `mask` uint8[N,H,W] or
`probabilities` float32[N,K] out) and are deterministic per image, so "the answer an image gets
alone" is exact.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from enet_serve.paths import DEFAULT_CAMVID as CAMVID, REPO_ROOT  # noqa: E402
FASHION = Path("/usr/share/datasets/fashion-mnist")

CAMVID_LABELS = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                 "Pedestrian", "Bicyclist"]
CAMVID_COLORS = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                 [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


def seg_graph(num_classes: int = 12, height: int | str = "H", width: int | str = "W") -> onnx.ModelProto:
    """mask = floor(mean over RGB * num_classes / 256): uint8[N,H,W,3] -> uint8[N,H,W]."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[3], keepdims=0),
        helper.make_node("Mul", ["m", "scale"], ["s"]),
        helper.make_node("Floor", ["s"], ["fl"]),
        helper.make_node("Cast", ["fl"], ["mask"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes, "tiny_seg",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", height, width, 3])],
        [helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", height, width])],
        [numpy_helper.from_array(np.array(num_classes / 256.0, np.float32), "scale")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def cls_graph(num_classes: int = 10, size: int = 28, channels: int = 1, seed: int = 0) -> onnx.ModelProto:
    """probabilities = softmax(flatten(image / 255) @ W): uint8[N,s,s,c] -> float32[N,K]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (size * size * channels, num_classes)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "inv"], ["x"]),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cls",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, channels])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", num_classes])],
        [numpy_helper.from_array(np.array(1 / 255.0, np.float32), "inv"),
         numpy_helper.from_array(np.array([-1, size * size * channels], np.int64), "shape"),
         numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(repo: Path, name: str, graph: onnx.ModelProto, config: dict) -> Path:
    """Write <repo>/<name>/1/model.{fp32,fp16}.onnx (the same tiny graph) and a config.json with their sha256."""
    d = repo / name
    (d / "1").mkdir(parents=True, exist_ok=True)
    files = {}
    for precision in ("fp32", "fp16"):
        path = d / "1" / f"model.{precision}.onnx"
        onnx.save(graph, str(path))
        files[precision] = {"path": f"1/model.{precision}.onnx", "sha256": sha256(path), "bytes": path.stat().st_size}
    config = {"name": name, "version": 1, "files": files, "weights": {"source": "test", "trained": True}, **config}
    (d / "config.json").write_text(json.dumps(config, indent=1))
    return d


def tiny_repository(repo: Path, *, seg_size=(120, 160), dynamic: bool = True) -> Path:
    """tiny-seg (as enet-camvid), tiny-cls (as lenet5-fashion) and an untrained tiny model."""
    h, w = seg_size
    write_model(repo, "enet-camvid", seg_graph(12, "H" if dynamic else h, "W" if dynamic else w), {
        "architecture": "tiny-seg", "task": "segment",
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 3, "height": h, "width": w,
                  "dynamic_size": dynamic, "size_multiple": 8},
        "outputs": [{"name": "mask", "dtype": "uint8", "shape": ["N", "H", "W"]}],
        "labels": CAMVID_LABELS, "colors": CAMVID_COLORS,
        "void": {"index": 11, "name": "Unlabelled", "color": [0, 0, 0]},
        "parameters": 1, "gflops": 0.001,
    })
    write_model(repo, "lenet5-fashion", cls_graph(10, 28, 1), {
        "architecture": "tiny-cls", "task": "classify",
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 1, "height": 28, "width": 28,
                  "dynamic_size": False, "size_multiple": 1},
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": ["N", 10]}],
        "labels": FASHION_LABELS, "parameters": 7840, "gflops": 0.00002,
    })
    return repo


def copy_model(src_repo: Path, name: str, dst_repo: Path) -> Path:
    shutil.copytree(src_repo / name, dst_repo / name)
    return dst_repo / name


def edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        target = cfg
        *parents, last = key.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    path.write_text(json.dumps(cfg))


# -- images ------------------------------------------------------------------------------------------------

def to_jpeg(img: Image.Image | np.ndarray, quality: int = 90) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def to_png(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def camvid_val_pngs(n: int) -> list[Path]:
    files = sorted((CAMVID / "val").glob("*.png"))
    return files[:n]


def camvid_jpegs(n: int) -> list[bytes]:
    return [to_jpeg(Image.open(p)) for p in camvid_val_pngs(n)]


def fashion_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n Fashion-MNIST test images (n x 28 x 28 uint8) and labels."""
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz", "rb") as f:
        magic, count, rows, cols = np.frombuffer(f.read(16), ">u4")
        assert magic == 2051
        images = np.frombuffer(f.read(int(n) * int(rows) * int(cols)), np.uint8).reshape(n, rows, cols)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        magic, count = np.frombuffer(f.read(8), ">u4")
        labels = np.frombuffer(f.read(n), np.uint8)
    return images, labels


def random_rgb(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    """Blocky random image (survives JPEG well enough; PNG keeps it exact)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-h // 8), -(-w // 8), 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:h, :w])


def stop_process(proc) -> None:
    """SIGTERM a server process (uvicorn shuts down gracefully), SIGKILL it if it is still there after 20 s."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def error_of(r) -> dict:
    """A response's error as {"code", "message", ...}: `{"error": {...}}`, or on /v2, where the protocol's
    clients read `error` as a string, from `{"error": message, "code": code}`."""
    body = r.json()
    if r.request.url.path.startswith("/v2"):
        assert isinstance(body["error"], str) and body["error"] and isinstance(body["code"], str), body
        return {"code": body["code"], "message": body["error"]}
    assert set(body["error"]) >= {"code", "message"}, body
    return body["error"]
