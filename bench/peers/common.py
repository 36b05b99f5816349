"""What every peer does per image, the service's own way: decode (simplejpeg) and resize to the native
size, the ONNX session, the mask PNG (palette, level 1). Only the serving machinery differs."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from enet_serve.model_config import load_config
from enet_serve.service import codecs

BATCH = 8  # the batch size limit of the batching peers (the service's max_batch_size default)
DELAY_S = 0.005  # their batch timeout (the service's max_delay_ms default)


def arguments(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", type=Path, required=True, help="a model directory of the repository")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    return p.parse_args()


class Segmenter:
    def __init__(self, model_dir: Path, precision: str = "fp32", threads: int = 0):
        import os

        cfg = load_config(model_dir)
        self.height, self.width = cfg.input.height, cfg.input.width
        self.palette = codecs.palette_bytes(cfg.palette())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_dir / cfg.files[precision].path), so,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def decode(self, data: bytes) -> tuple[np.ndarray, int, int]:
        """The network's input for one JPEG, and the image's own height and width."""
        d = codecs.decode_image(data, channels=3, min_size=(self.height, self.width))
        return codecs.resize_image(d.array, self.height, self.width), d.height, d.width

    def run(self, images: list[np.ndarray]) -> np.ndarray:
        x = images[0][None] if len(images) == 1 else np.stack(images)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def encode(self, mask: np.ndarray, height: int, width: int) -> bytes:
        return codecs.encode_mask_png(codecs.resize_mask(mask, height, width), self.palette, 1)

    def answer(self, data: bytes) -> bytes:
        x, h, w = self.decode(data)
        return self.encode(self.run([x])[0], h, w)
