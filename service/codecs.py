"""Image decoding and mask encoding. Everything here is synchronous and runs in the codec thread pool.

Decoding: JPEG goes through simplejpeg (libjpeg-turbo, releases the GIL; faster than
Pillow here, BENCHMARKS.md "Codecs"); it can also scale down by DCT when the model's input is
smaller than the image. Everything else (PNG, WebP, GIF, BMP, TIFF, CMYK JPEG) goes through Pillow.
EXIF orientation is applied; grayscale, RGBA/LA/P (composited on white), CMYK, 16-bit and float
(0..1) inputs become RGB, or 1-channel gray for 1-channel models. Sizes are checked from the header before any
pixel is decoded (decompression bombs get 413).

Masks are written as palette PNGs by a small writer over zlib (which also releases the GIL):
filter None and the RLE strategy, which does no match search, so the level hardly changes time or
size; faster and smaller than Pillow's encoder at its default level (BENCHMARKS.md "Codecs"). The
default level is 1 (`png_compress_level`); `enet-serve bench load --codecs` re-measures.
"""
from __future__ import annotations

import base64
import io
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from enet_serve.service.errors import BadImage, PayloadTooLarge

try:  # optional: the fast JPEG path
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a serving dependency
    simplejpeg = None

EXIF_ORIENTATION = 0x0112
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "TGA", "ICO", "AVIF")
Image.init()
PILLOW_FORMATS = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)

_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def sniff(data: bytes) -> str | None:
    """The image format from the first bytes, or None."""
    for sig, fmt in _SIGNATURES:
        if data.startswith(sig):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass
class Decoded:
    array: np.ndarray  # HxWxC uint8, C-contiguous (possibly already scaled down, see decode_image)
    width: int  # the image's own size, after EXIF orientation: masks come back at this size
    height: int
    format: str


def decode_image(data: bytes, *, channels: int = 3, max_pixels: int = 40_000_000,
                 min_size: tuple[int, int] | None = None) -> Decoded:
    """Decode `data` to HxWx`channels` uint8.

    `min_size=(h, w)`: the caller resizes to that size anyway, so a JPEG may be decoded at a DCT
    scale (1/2, 1/4, 1/8) that stays at least that large; `width`/`height` stay the full size.
    """
    if not data:
        raise BadImage("the request body is empty; send the image bytes")
    _let_pillow_open(max_pixels)  # Pillow also reads a JPEG's EXIF orientation
    fmt = sniff(data)
    if fmt == "jpeg" and simplejpeg is not None:
        decoded = _decode_simplejpeg(data, channels, max_pixels, min_size)
        if decoded is not None:
            return decoded
    return _decode_pillow(data, channels, max_pixels, fmt)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height} = {width * height} pixels; "
                              f"the limit is {max_pixels} (max_image_pixels)")


def _exif_orientation_jpeg(data: bytes) -> int:
    """EXIF orientation of a JPEG (1 when absent); reads only the headers."""
    if data.find(b"Exif\x00\x00", 0, 65536) < 0:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(EXIF_ORIENTATION, 1)
        return int(value) if 1 <= int(value) <= 8 else 1
    except Exception:
        return 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an HxWxC array (the same as PIL.ImageOps.exif_transpose)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.transpose(1, 0, 2)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _decode_simplejpeg(data: bytes, channels: int, max_pixels: int, min_size) -> Decoded | None:
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None  # let Pillow try (and report)
    if colorspace in ("CMYK", "YCCK"):
        return None  # libjpeg-turbo cannot convert these to RGB
    _check_pixels(width, height, max_pixels)
    orientation = _exif_orientation_jpeg(data)
    kwargs = {}
    if min_size is not None:
        mh, mw = min_size
        if orientation >= 5:
            mh, mw = mw, mh
        if mh < height and mw < width:
            kwargs = {"min_height": mh, "min_width": mw}
    try:
        a = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB", **kwargs)
    except (ValueError, RuntimeError):
        return None
    if a.ndim == 2:
        a = a[:, :, None]
    if orientation >= 5:
        width, height = height, width
    if orientation != 1:
        a = _orient(a, orientation)
    return Decoded(a, width, height, "jpeg")


_PILLOW_LIMIT_LOCK = threading.Lock()
# max_image_pixels is the limit here, checked from the header: Pillow's warning past its own one is noise.
# Set once, not per decode: warnings.catch_warnings() swaps process-wide state, unsafe in the codec threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _let_pillow_open(max_pixels: int) -> None:
    """Pillow refuses an image over 2 * Image.MAX_IMAGE_PIXELS (~179 MP) inside Image.open, before
    _check_pixels sees its size: where that is below max_pixels (ours, which every image decoded here
    meets), raise Pillow's limit to it (its warning there, its error at twice it). The limit is process-wide
    (Pillow has no per-call one): only ever raised, only as far as the configured max_image_pixels, and
    left alone when someone turned it off (None)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or 2 * limit >= max_pixels:
        return
    with _PILLOW_LIMIT_LOCK:  # codec threads: never lower what another thread raised
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and limit < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _decode_pillow(data: bytes, channels: int, max_pixels: int, fmt: str | None) -> Decoded:
    try:
        img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        _check_pixels(img.width, img.height, max_pixels)
        img = ImageOps.exif_transpose(img)  # loads the pixels (the first frame of animations)
        img.load()
        a = _to_array(img, channels)
    except (PayloadTooLarge, BadImage):
        raise
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"the image is too large: {e}") from e
    except UnidentifiedImageError as e:
        raise BadImage("the body is not an image this server can decode (JPEG, PNG, WebP, GIF, BMP, TIFF)") from e
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error, MemoryError) as e:
        raise BadImage(f"cannot decode the image: {e}") from e
    return Decoded(a, a.shape[1], a.shape[0], (img.format or fmt or "unknown").lower())


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    """HxWx`channels` uint8 from any Pillow mode."""
    mode = img.mode
    if mode == "F":  # 32-bit float gray: 0..1 when every value lies there (as float TIFFs are written), else 0..255
        a = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return _gray_to(np.clip(np.rint(a), 0, 255).astype(np.uint8), channels)
    if mode.startswith("I"):  # 16-bit or 32-bit integer gray
        a = np.asarray(img)
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            gray = (np.clip(a, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        else:
            gray = np.clip(a, 0, 255).astype(np.uint8)
        return _gray_to(gray, channels)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        img = background
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a)


def _gray_to(gray: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return np.ascontiguousarray(gray[:, :, None])
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


# -- geometry -------------------------------------------------------------------------------------------

def resize_image(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of an HxWxC uint8 image."""
    if a.shape[0] == height and a.shape[1] == width:
        return a
    img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    out = np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))
    if out.ndim == 2:
        out = out[:, :, None]
    return np.ascontiguousarray(out)


def crop_resize_size(height: int, width: int, image_h: int, image_w: int, fraction: float) -> tuple[int, int]:
    """The size an image_h x image_w image is resized to before its centre height x width is cropped: the
    aspect kept, just covering (height / fraction, width / fraction) (torchvision's Resize(256) for a
    224 crop: the shorter side to 256)."""
    scale = max(height / fraction / image_h, width / fraction / image_w)
    return max(height, round(image_h * scale)), max(width, round(image_w * scale))


def resize_center_crop(a: np.ndarray, height: int, width: int, fraction: float) -> np.ndarray:
    """`a` resized (bilinear, antialiased) to `crop_resize_size`, then its centre height x width: the
    evaluation crop that classifiers' reference accuracies are measured on."""
    rh, rw = crop_resize_size(height, width, a.shape[0], a.shape[1], fraction)
    resized = resize_image(a, rh, rw)
    top, left = int(round((rh - height) / 2)), int(round((rw - width) / 2))
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an HxW class-index mask."""
    if mask.shape[0] == height and mask.shape[1] == width:
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


def pad_to_multiple(a: np.ndarray, multiple: int, fill: tuple[int, ...] | None = None) -> np.ndarray:
    """Pad bottom/right so that height and width are multiples of `multiple`: with the colour `fill` (one
    value per channel), or with the edge pixels where it is None."""
    h, w = a.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return a
    if fill is None:
        return np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="edge")
    out = np.empty((h + ph, w + pw, a.shape[2]), dtype=a.dtype)
    out[:h, :w] = a
    out[h:, :] = fill
    out[:h, w:] = fill
    return out


# -- encoding -------------------------------------------------------------------------------------------

def palette_bytes(colors) -> bytes:
    """PLTE payload from [(r, g, b), ...] (at most 256 entries)."""
    return bytes(int(v) & 0xFF for c in list(colors)[:256] for v in c)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_mask_png(mask: np.ndarray, palette: bytes, level: int = 1) -> bytes:
    """An 8-bit palette PNG whose pixel values are the mask's class indices (palette = class colours)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = mask.shape
    entries = len(palette) // 3
    top = int(mask.max(initial=0))
    if top >= entries:  # every index needs a palette entry
        palette = palette + bytes(3 * (top + 1 - entries))
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 0  # filter type None: masks are runs of equal bytes, which RLE compresses best
    rows[:, 1:] = mask
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = z.compress(rows.data) + z.flush()
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)),
        _chunk(b"PLTE", palette),
        _chunk(b"IDAT", idat),
        _chunk(b"IEND", b""),
    ))


def encode_grey_png(grey: np.ndarray, level: int = 1) -> bytes:
    """An 8-bit greyscale PNG of an HxW uint8 array (the confidence map): filter Sub, which turns its
    smooth ramps into small differences that zlib packs well."""
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    h, w = grey.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 1  # filter type Sub: each byte minus the one to its left (mod 256)
    rows[:, 1] = grey[:, 0]
    np.subtract(grey[:, 1:], grey[:, :-1], out=rows[:, 2:])
    idat = zlib.compress(rows.data, level)
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)),
        _chunk(b"IDAT", idat),
        _chunk(b"IEND", b""),
    ))


def encode_jpeg(a: np.ndarray, quality: int = 90) -> bytes:
    if simplejpeg is not None:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(a), quality=quality, colorspace="RGB" if a.shape[2] == 3 else "GRAY")
    buf = io.BytesIO()
    Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def overlay(image: np.ndarray, mask: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with the mask's colours blended in (`alpha` = weight of the colours)."""
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    colours = lut[mask]
    w = int(round(alpha * 256))
    out = (image.astype(np.uint16) * (256 - w) + colours.astype(np.uint16) * w) >> 8
    return out.astype(np.uint8)


def color_lut(colors) -> np.ndarray:
    """256x3 uint8 table: class index -> colour (black past the given colours)."""
    lut = np.zeros((256, 3), np.uint8)
    for i, c in enumerate(list(colors)[:256]):
        lut[i] = c
    return lut


def class_fractions(mask: np.ndarray, names: list[str]) -> dict[str, float]:
    counts = np.bincount(mask.ravel(), minlength=len(names))
    total = max(1, int(mask.size))
    out = {name: round(float(counts[i]) / total, 6) for i, name in enumerate(names)}
    for i in range(len(names), len(counts)):  # indices without a name (should not happen)
        if counts[i]:
            out[f"class_{i}"] = round(float(counts[i]) / total, 6)
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
