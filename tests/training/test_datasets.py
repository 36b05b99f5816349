import gzip
import struct

import numpy as np
import pytest
import torch

from enet_serve.training.augment import SegmentationAugment
from enet_serve.training.datasets import (camvid_listing, drive_of, CAMVID_VOID, DEFAULT_CAMVID, DEFAULT_FASHION_MNIST, CamVid, DatasetError,
                               FashionMNIST, enet_class_weights, read_idx)

needs_camvid = pytest.mark.skipif(not (DEFAULT_CAMVID / "train.txt").is_file(), reason="no ../shared/datasets/camvid")
needs_fashion = pytest.mark.skipif(not DEFAULT_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")


@needs_camvid
def test_camvid_reads_the_shared_split():
    val = CamVid(DEFAULT_CAMVID, "val", limit=3)
    assert len(val) == 3
    image, label = val[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 360, 480)
    assert label.dtype == torch.uint8 and label.shape == (360, 480)
    assert int(label.max()) <= CAMVID_VOID
    freq = val.class_frequencies()
    assert freq.shape == (11,) and float(freq.sum()) == pytest.approx(1.0)


@needs_camvid
def test_camvid_split_sizes():
    assert len((DEFAULT_CAMVID / "train.txt").read_text().split("\n")[:-1]) == 367
    assert len(CamVid(DEFAULT_CAMVID, "val")) == 101


@needs_camvid
def test_camvid_drives_split_train_and_val():
    """CamVid's splits are drives: val is more of 0016E5, so a whole drive must be held out to measure
    what a new street gets (train+val: 62 0001TP, 101 0006R0, 305 0016E5)."""
    both = camvid_listing(DEFAULT_CAMVID, "train+val")
    assert len(both) == 468
    assert {drive_of(img) for img, _ in camvid_listing(DEFAULT_CAMVID, "val")} == {"0016E5"}
    held_out = camvid_listing(DEFAULT_CAMVID, "train+val", drives=("0006R0",))
    rest = camvid_listing(DEFAULT_CAMVID, "train+val", exclude_drives=("0006R0",))
    assert len(held_out) == 101 and len(rest) == 367
    assert not {img for img, _ in held_out} & {img for img, _ in rest}
    ds = CamVid(DEFAULT_CAMVID, "train+val", drives=("0001TP",), limit=2)
    assert len(ds) == 2 and all(drive_of(img) == "0001TP" for img, _ in ds.files)
    with pytest.raises(DatasetError, match="no frames left"):
        camvid_listing(DEFAULT_CAMVID, "val", drives=("0006R0",))


def test_camvid_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="test.txt"):
        CamVid(tmp_path, "test")


def test_camvid_listing_naming_a_missing_file(tmp_path):
    (tmp_path / "val.txt").write_text("val/a.png valannot/a.png\n")
    with pytest.raises(DatasetError, match="a.png"):
        CamVid(tmp_path, "val")


def test_enet_class_weights_favour_rare_classes():
    w = enet_class_weights(torch.tensor([0.5, 0.01, 0.0]))
    assert w[0] < w[1] < w[2]
    assert float(w[2]) == pytest.approx(1 / np.log(1.02))


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    _write_idx(path, a, gz)
    np.testing.assert_array_equal(read_idx(path), a)


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x89PNG....")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_reader_on_own_copy(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5), gz=True)
    ds = FashionMNIST(tmp_path, "test")
    image, label = ds[4]
    assert len(ds) == 5 and image.shape == (1, 28, 28) and int(label) == 4
    with pytest.raises(DatasetError, match="train-images"):
        FashionMNIST(tmp_path, "train")


@needs_fashion
def test_fashion_mnist_debian_package():
    test = FashionMNIST(DEFAULT_FASHION_MNIST, "test")
    assert len(test) == 10000
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert sorted(test.targets.unique().tolist()) == list(range(10))


def test_segmentation_augment_keeps_image_and_label_aligned():
    # A label that equals the image's first channel must stay equal through flips, scaling and crops.
    image = torch.randint(0, 11, (3, 64, 80), dtype=torch.uint8)
    aug = SegmentationAugment(crop=(48, 64), scale=(1.0, 1.0), jitter=0.0)
    for _ in range(5):
        img, lbl = aug(image, image[0].clone())
        assert img.shape == (3, 48, 64) and lbl.shape == (48, 64)
        assert torch.equal(img[0], lbl)


@pytest.mark.parametrize("scale", [0.9, 1.5])
def test_rescaled_labels_stay_on_their_pixels(scale):
    # Each pixel of both holds its source column: a label must come from the column whose centre the
    # image's (bilinear, pixel-centre) sample is nearest, not from half a pixel up-left of it.
    columns = torch.arange(80, dtype=torch.uint8).expand(64, 80)
    image = (columns * 3).expand(3, -1, -1).contiguous()
    h, w = round(64 * scale), round(80 * scale)
    torch.manual_seed(0)
    for _ in range(4):
        img, lbl = SegmentationAugment(crop=(h, w), scale=(scale, scale), jitter=0.0)(image, columns.clone())
        error = (lbl.float() - img[0].float() / 3)[:, 2:-2]  # away from the borders, where bilinear clamps
        # the mean says where labels sit (legacy nearest: -0.33 and -0.55 px); the bound on the largest
        # error allows the image's rounding to whole values (a third of a column here)
        assert abs(error.mean()) < 0.1 and error.abs().max() <= 0.5 + 1 / 3 + 1e-4, (error.mean(), error.abs().max())


def test_segmentation_augment_pads_with_void():
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    img, lbl = SegmentationAugment(crop=(32, 32), scale=(1.0, 1.0), jitter=0.0, void=11)(image, image[0])
    assert (lbl == 11).sum() == 32 * 32 - 16 * 16


def test_a_scaled_down_frame_lands_anywhere_in_its_crop():
    """Shrunk below the crop (random scale < 1 in whole-frame epochs), the frame is padded with void around a
    random place, not always bottom-right of it: the model would otherwise see small frames top-left only."""
    import random

    random.seed(0)
    image = torch.full((3, 40, 60), 200, dtype=torch.uint8)
    label = torch.zeros(40, 60, dtype=torch.uint8)
    aug = SegmentationAugment(crop=(40, 60), scale=(0.5, 0.5), jitter=0.0, void=11)
    corners = set()
    for _ in range(20):
        img, lbl = aug(image, label)
        assert img.shape == (3, 40, 60) and int((lbl == 0).sum()) == 20 * 30  # the frame, the rest void
        rows, cols = torch.nonzero(lbl == 0, as_tuple=True)
        corners.add((int(rows.min()), int(cols.min())))
        assert (img[:, lbl == 0] == 200).all() and (img[:, lbl == 11] == 0).all()
    assert len(corners) > 5  # before: always (0, 0)
