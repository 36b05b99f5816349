"""`enet-serve bench gpu` in CPU mode (this machine has no GPU): it says so, skips the GPU rows, and
runs every step with the CPU plans standing in, so the command that proves the GPU path cannot rot."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from enet_serve.bench import gpu
from enet_serve.cli import build_parser
from svc_helpers import random_rgb


@pytest.mark.slow
def test_gpu_check_in_cpu_mode(tiny_repo, tmp_path, capsys):
    data = tmp_path / "val"
    data.mkdir()
    for i in range(3):
        Image.fromarray(random_rgb(i, 120, 160)).save(data / f"f{i}.png")
    out = tmp_path / "out"
    argv = ["bench", "gpu", "--repository", str(tiny_repo), "--data", str(data), "--frames", "3",
            "--sizes", "120x160,128x256", "--batches", "1,2", "--seconds", "0.05", "--clients", "1,2",
            "--load-seconds", "0.5", "--out", str(out)]
    args = build_parser(argv).parse_args(argv)
    assert args._run(args) == 0
    printed = capsys.readouterr().out
    assert "CPU MODE (onnxruntime has no CUDA provider)" in printed and "GPU rows are skipped" in printed
    result = json.loads((out / "gpu.json").read_text())
    assert result["mode"] == "cpu" and result["ok"] is True
    assert result["environment"]["onnxruntime"] and "CPUExecutionProvider" in result["environment"]["available_providers"]
    assert result["reference"]["providers"] == ["CPUExecutionProvider"]
    assert [p["plan"] for p in result["plans"]] == ["CPU FP16 (stand-in)"]  # no TensorRT/CUDA rows
    plan = result["plans"][0]
    assert plan["mask_agreement"] >= 0.99 and plan["nodes_by_provider"]["CPUExecutionProvider"] > 0
    assert [(r["size"], r["height"], r["width"], r["batch"]) for r in plan["latency"]] == [
        ("120x160", 120, 160, 1), ("120x160", 120, 160, 2), ("128x256", 128, 256, 1), ("128x256", 128, 256, 2)]
    assert [s["clients"] for s in result["service"]] == [1, 2]
    assert all(s["requests"] > 0 and not s["errors"] for s in result["service"])
    md = (out / "gpu.md").read_text()
    assert md.startswith("### GPU check: CPU mode") and "| CPU FP16 (stand-in) |" in md and "| 2 |" in md


def test_sizes_are_landscape():
    assert gpu.parse_sizes("360x480,640x360,1280x720") == [("360x480", 360, 480), ("640x360", 360, 640),
                                                           ("1280x720", 720, 1280)]


def test_markdown_names_the_gpu_and_a_failed_plan():
    env = {"gpu": {"name": "NVIDIA H200", "memory": "143771 MiB", "compute_capability": "9.0", "driver": "580",
                   "driver_cuda": "13.0"}, "onnxruntime": "1.31.1", "onnxruntime_distributions": {"onnxruntime-gpu": "1.31.1"},
           "available_providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
           "cuda_libraries": {"nvidia-cudnn-cu13": "9.27"}, "tensorrt_libraries": {}, "provider_links": {"libnvinfer": 10}}
    ref = {"plan": "CPU FP32", "ok": True, "create_s": 0.2, "providers": ["CPUExecutionProvider"], "nodes_not_on_gpu": None,
           "latency": [{"size": "360x480", "batch": 1, "median_ms": 50.0}]}
    trt = {"plan": "TensorRT FP16", "ok": False, "error": "EPFail: libnvinfer.so.10: cannot open shared object file"}
    cuda = {"plan": "CUDA FP16", "ok": True, "create_s": 1.5, "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "nodes_not_on_gpu": [], "mask_agreement": 0.9995, "mask_agreement_needed": 0.99,
            "latency": [{"size": "360x480", "batch": 1, "median_ms": 1.25}]}
    md = gpu.markdown({"environment": env, "mode": "gpu", "model": "enet-camvid", "frames": 16, "input": [360, 480],
                       "elapsed_s": 200, "reference": ref, "plans": [trt, cuda]})
    assert md.startswith("### GPU check: NVIDIA H200")
    assert "| TensorRT FP16 | failed | EPFail: libnvinfer" in md
    assert "| CUDA FP16 | 1.5 s | CUDAExecutionProvider, CPUExecutionProvider | 0 | 99.950 % (>= 99.0 %) |" in md
    assert "| CUDA FP16 | 1.25 |" in md


def test_tensorrt_without_its_libraries_is_skipped_not_failed():
    """On a machine without TensorRT's libraries (the lent GPU machine) its plan fails by design and the
    service falls back to CUDA: the check is still ok; with the libraries there, the same failure counts."""
    trt = {"plan": "TensorRT FP16", "device": "tensorrt", "ok": False, "error": "EPFail: libnvinfer.so.10: cannot open"}
    cuda = {"plan": "CUDA FP16", "device": "cuda", "ok": True, "mask_ok": True}
    bad_cuda = {**cuda, "mask_ok": False}
    assert gpu.plan_ok(dict(trt), {"tensorrt_libraries": {}}) and gpu.plan_ok(cuda, {"tensorrt_libraries": {}})
    assert not gpu.plan_ok(dict(trt), {"tensorrt_libraries": {"tensorrt-cu13-libs": "10.13"}})
    assert not gpu.plan_ok(bad_cuda, {"tensorrt_libraries": {}})
    row = dict(trt)
    gpu.plan_ok(row, {"tensorrt_libraries": {}})
    env = {"gpu": None, "onnxruntime": "1.31.1", "onnxruntime_distributions": {}, "available_providers": [],
           "cuda_libraries": {}, "tensorrt_libraries": {}, "provider_links": {}}
    md = gpu.markdown({"environment": env, "mode": "cpu", "cpu_mode_reason": "-", "model": "m", "frames": 1,
                       "input": [8, 8], "elapsed_s": 1,
                       "reference": {"plan": "CPU FP32", "ok": True, "create_s": 0.1, "providers": ["CPU"]},
                       "plans": [row]})
    assert "| TensorRT FP16 | skipped (no TensorRT libraries installed) | EPFail" in md
