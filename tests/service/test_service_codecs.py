"""service/codecs.py: decoding (all the input modes, EXIF, limits) and mask encoding."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from enet_serve.service import codecs
from enet_serve.service.errors import BadImage, PayloadTooLarge
from svc_helpers import random_rgb, to_jpeg, to_png


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_sniff():
    assert codecs.sniff(to_jpeg(random_rgb(0))) == "jpeg"
    assert codecs.sniff(to_png(random_rgb(0))) == "png"
    assert codecs.sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert codecs.sniff(b"hello") is None


def test_jpeg_fast_path_matches_pillow():
    rgb = random_rgb(1, 96, 128)
    data = to_jpeg(rgb)
    fast = codecs.decode_image(data)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert fast.array.shape == (96, 128, 3) and fast.array.dtype == np.uint8
    assert (fast.width, fast.height) == (128, 96)
    assert np.abs(fast.array.astype(int) - ref.astype(int)).mean() < 2.0
    gray = codecs.decode_image(data, channels=1)
    assert gray.array.shape == (96, 128, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_like_pillow(orientation):
    rgb = random_rgb(2, 64, 96)
    data = _jpeg_with_orientation(rgb, orientation)
    ours = codecs.decode_image(data)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert ours.array.shape == ref.shape
    assert (ours.width, ours.height) == (ref.shape[1], ref.shape[0])
    assert np.abs(ours.array.astype(int) - ref.astype(int)).mean() < 2.0


def test_dct_scaled_decode_keeps_full_size():
    rgb = np.repeat(np.repeat(random_rgb(3, 64, 96), 8, axis=0), 8, axis=1)  # 512 x 768
    d = codecs.decode_image(to_jpeg(rgb), min_size=(120, 160))
    assert (d.width, d.height) == (768, 512)
    assert d.array.shape[0] >= 120 and d.array.shape[1] >= 160 and d.array.shape[0] < 512


def _pil_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_become_rgb_or_gray():
    rgb = random_rgb(4, 32, 48)
    base = Image.fromarray(rgb)
    cases = {
        "L": base.convert("L"),
        "P": base.convert("P"),
        "RGBA": base.convert("RGBA"),
        "LA": base.convert("LA"),
        "1": base.convert("1"),
    }
    for mode, img in cases.items():
        for channels in (3, 1):
            d = codecs.decode_image(_pil_bytes(img), channels=channels)
            assert d.array.shape == (32, 48, channels), mode
            assert d.array.dtype == np.uint8
    cmyk = codecs.decode_image(_pil_bytes(base.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.array.shape == (32, 48, 3)
    assert np.abs(cmyk.array.astype(int) - rgb.astype(int)).mean() < 12


def test_rgba_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    d = codecs.decode_image(to_png(rgba))
    assert (d.array == 255).all()


def test_16_bit_png_scales_to_8_bit():
    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)
    img = Image.fromarray(a16)  # mode I;16
    d = codecs.decode_image(_pil_bytes(img), channels=1)
    assert d.array[..., 0].tolist() == (a16 >> 8).astype(np.uint8).tolist()
    d3 = codecs.decode_image(_pil_bytes(img), channels=3)
    assert d3.array.shape == (8, 8, 3)


def test_float_tiff_in_0_1_scales_to_8_bit():
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    d = codecs.decode_image(_pil_bytes(Image.fromarray(ramp, mode="F"), "TIFF"), channels=1)
    assert d.format == "tiff"
    assert d.array[..., 0].tolist() == np.rint(ramp * 255).astype(np.uint8).tolist()
    # a float image past 1 is read as 0..255; NaN is black, not whatever the cast makes of it
    wide = np.array([[0.0, 2.0, 254.6, 300.0], [np.nan, np.inf, -5.0, 128.0]], np.float32)
    d = codecs.decode_image(_pil_bytes(Image.fromarray(wide, mode="F"), "TIFF"), channels=3)
    assert d.array[..., 0].tolist() == [[0, 2, 255, 255], [0, 255, 0, 128]]


@pytest.mark.parametrize("data", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b"\xff\xd8\xff\xe0garbage"])
def test_undecodable(data):
    with pytest.raises(BadImage):
        codecs.decode_image(data)


def test_truncated_png():
    data = to_png(random_rgb(5))
    with pytest.raises(BadImage):
        codecs.decode_image(data[: len(data) // 2])


def test_empty():
    with pytest.raises(BadImage):
        codecs.decode_image(b"")


def test_pixel_limit_checked_from_the_header():
    data = to_jpeg(random_rgb(6, 64, 64))
    with pytest.raises(PayloadTooLarge):
        codecs.decode_image(data, max_pixels=64 * 64 - 1)
    with pytest.raises(PayloadTooLarge):
        codecs.decode_image(to_png(random_rgb(6, 64, 64)), max_pixels=100)
    assert codecs.decode_image(data, max_pixels=64 * 64).width == 64


def _png_header_only(width: int, height: int) -> bytes:
    """A grey PNG that says it is width x height, with no pixel data: its size is read, nothing decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_max_image_pixels_above_pillows_own_limit(monkeypatch):
    """max_image_pixels is the limit, also above Pillow's bomb check (2 * Image.MAX_IMAGE_PIXELS, ~179 MP),
    which fires inside Image.open, before our header check."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    # 196 MP, over Pillow's limit, under ours: past both size checks, to the (empty) pixel data
    with pytest.raises(BadImage, match="truncated"):
        codecs.decode_image(_png_header_only(14_000, 14_000), max_pixels=200_000_000)
    with pytest.raises(PayloadTooLarge):
        codecs.decode_image(_png_header_only(14_000, 14_000), max_pixels=190_000_000)
    # the same with Pillow's limit at 2 x 1000 pixels: an image between the two decodes (PNG, WebP, BMP...)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    rgb = random_rgb(6, 64, 64)
    for data in (to_png(rgb), _to(rgb, "WEBP", lossless=True), _to(rgb, "BMP")):
        assert np.array_equal(codecs.decode_image(data, max_pixels=64 * 64).array, rgb)
    assert Image.MAX_IMAGE_PIXELS == 64 * 64  # raised only as far as our limit
    with pytest.raises(PayloadTooLarge, match="max_image_pixels"):
        codecs.decode_image(to_png(rgb), max_pixels=64 * 64 - 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a JPEG's EXIF orientation is read by Pillow too
    rotated = codecs.decode_image(_jpeg_with_orientation(random_rgb(6, 32, 80), 6), max_pixels=64 * 64)
    assert (rotated.width, rotated.height) == (32, 80)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # turned off by someone: left off
    assert codecs.decode_image(to_png(rgb), max_pixels=64 * 64).width == 64 and Image.MAX_IMAGE_PIXELS is None


def _to(rgb: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_mask_png_roundtrip():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 12, (37, 53), dtype=np.uint8)
    colors = [(i * 20, 255 - i * 20, i) for i in range(12)]
    for level in (0, 1, 9):
        png = codecs.encode_mask_png(mask, codecs.palette_bytes(colors), level)
        img = Image.open(io.BytesIO(png))
        assert img.mode == "P" and img.size == (53, 37)
        assert np.array_equal(np.asarray(img), mask)
        assert img.getpalette()[:6] == [0, 255, 0, 20, 235, 1]


def test_mask_png_palette_grows_for_unknown_indices():
    mask = np.full((4, 4), 200, np.uint8)
    png = codecs.encode_mask_png(mask, codecs.palette_bytes([(1, 2, 3)]))
    assert np.asarray(Image.open(io.BytesIO(png))).max() == 200


def test_resize_mask_is_nearest():
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    big = codecs.resize_mask(mask, 4, 6)
    assert big.shape == (4, 6) and set(np.unique(big)) == {0, 1, 2, 3}


def test_overlay_blends():
    image = np.full((2, 2, 3), 200, np.uint8)
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    lut = codecs.color_lut([(0, 0, 0), (255, 0, 0)])
    out = codecs.overlay(image, mask, lut, 0.5)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [227, 100, 100]
    assert codecs.overlay(image, mask, lut, 0.0)[0, 1].tolist() == [200, 200, 200]


def test_pad_to_multiple():
    a = np.zeros((10, 17, 3), np.uint8)
    assert codecs.pad_to_multiple(a, 8).shape == (16, 24, 3)
    assert codecs.pad_to_multiple(np.zeros((8, 16, 3), np.uint8), 8).shape == (8, 16, 3)


def test_class_fractions():
    mask = np.array([[0, 0], [1, 3]], np.uint8)
    f = codecs.class_fractions(mask, ["a", "b", "c", "d"])
    assert f == {"a": 0.5, "b": 0.25, "c": 0.0, "d": 0.25}


def test_resize_center_crop_is_the_evaluation_crop():
    """torchvision's Resize(256) + CenterCrop(224): the shorter side to 256, the aspect kept, the centre taken."""
    assert codecs.crop_resize_size(224, 224, 480, 640, 224 / 256) == (256, 341)
    assert codecs.crop_resize_size(224, 224, 640, 480, 224 / 256) == (341, 256)
    wide = np.zeros((60, 180, 3), np.uint8)
    wide[:, 60:120] = 200  # the middle third
    out = codecs.resize_center_crop(wide, 20, 20, 1.0)  # 60x180 -> 20x60, its middle 20x20
    # (the antialiasing filter reaches a little past the middle third at the crop's edges)
    assert out.shape == (20, 20, 3) and (out[:, 1:-1] == 200).all() and (out >= 150).all()
    squashed = codecs.resize_image(wide, 20, 20)  # the whole image, squashed: the dark sides too
    assert (squashed[:, :5] < 50).all()
    expected = codecs.resize_image(wide, 40, 120)[10:30, 50:70]
    assert np.array_equal(codecs.resize_center_crop(wide, 20, 20, 0.5), expected)
