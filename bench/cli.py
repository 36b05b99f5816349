"""`enet-serve bench runtime|load|architectures|gpu|stream`: the raw onnxruntime limit of a graph, the service under
load, and the table of every architecture's size and speed."""
from __future__ import annotations

import argparse

from enet_serve.bench import all as all_, architectures, compare, gpu, load, memory, onnx_runtime, precision, report, stream

BENCHMARKS = {
    "runtime": (onnx_runtime, "an ONNX graph in-process with onnxruntime: ms per frame at batch 1..8 (the limit)"),
    "load": (load, "the service over HTTP with concurrent clients, against the in-process limit"),
    "peers": (compare, "the service against its peers (FastAPI, LitServe, Ray Serve) and the in-process limit, "
              "1-64 clients"),
    "precision": (precision, "ENet FP32 against INT8 in-process at 480x360, 640x360 and 1280x720, 1 and all threads"),
    "report": (report, "write BENCHMARKS.md's generated sections and plots from bench/results/*.json"),
    "all": (all_, "every benchmark of BENCHMARKS.md, then the report (--quick: a smoke run)"),
    "memory": (memory, "resident memory of the service with the shipped models: after warm-up and at an overload's peak"),
    "architectures": (architectures, "every registered architecture exported (FP32) and timed in-process: "
                      "parameters, GFLOPs, ms per image, reference accuracy"),
    "gpu": (gpu, "the GPU path on an NVIDIA machine: versions, each plan (TensorRT FP16, CUDA FP16, CUDA FP32) built, "
            "masks against CPU FP32, latency, the service under load; CPU mode elsewhere"),
    "stream": (stream, "the segmentation answers' cost per frame (rle, regions, confidence, ...) and the video "
               "stream's overhead over POST /segment"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_) in BENCHMARKS.items():
        q = sub.add_parser(name, help=help_, description=help_)
        module.add_arguments(q)
        q.set_defaults(_bench=module.run)


def run(args: argparse.Namespace) -> int:
    return args._bench(args)
