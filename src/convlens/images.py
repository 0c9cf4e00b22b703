"""Client pixels to checked input: uploaded bytes to a PIL image, JSON arrays to a batch.

Serving hands us whatever a client sends. Decoding it is the riskiest step, so this module
is strict and explicit: only five formats (Pillow's other decoders, EPS through Ghostscript
among them, are never reached), a byte limit checked before reading, a pixel limit checked
from the header before any pixel is decoded (decompression bombs), and one exception type
whose message tells the client what was wrong. Arrays sent as JSON get the same treatment:
shape, dtype, range and finiteness are checked before anything reaches the model.

Other formats never reach Pillow: a few well-known ones (TIFF, PDF, SVG, ...) are recognised
from their first bytes, without parsing, only so that the client hears "unsupported format"
(`UnsupportedFormat`, HTTP 415) rather than "not an image".
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from convlens.preprocessing import INPUT_SHAPE

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
# Modes `convlens.preprocessing.to_mnist` reads correctly; 16-bit and float images would
# be clipped to white by the conversion to 8-bit gray, so they are refused instead.
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")


class ImageError(ValueError):
    """The upload is not an image this service accepts; the message says why."""


class ImageTooLarge(ImageError):
    """The upload is over the byte or pixel limit."""


class UnsupportedFormat(ImageError):
    """The upload is a known image or document format that this service does not decode."""


# (name, pattern matched at the start of the upload): recognised, never parsed.
_OTHER_FORMATS = tuple(
    (name, re.compile(pattern, re.DOTALL))
    for name, pattern in (
        ("TIFF", rb"II\*\x00|MM\x00\*|II\+\x00|MM\x00\+"),
        ("PDF", rb"\s*%PDF-"),
        ("PostScript", rb"%!PS|\xc5\xd0\xd3\xc6"),
        # matched lower-cased: an optional BOM, XML declaration, comments, doctype, then <svg
        (
            "SVG",
            rb"(\xef\xbb\xbf)?\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*"
            rb"(<!doctype[^>]*>\s*)?<svg\b",
        ),
        ("ICO", rb"\x00\x00[\x01\x02]\x00[\x01-\xff]\x00"),
        ("PSD", rb"8BPS"),
        ("HEIF/AVIF", rb"....ftyp(heic|heix|hevc|heim|heis|mif1|msf1|avif|avis)"),
        ("JPEG 2000", rb"\x00\x00\x00\x0cjP  \r\n|\xff\x4f\xff\x51"),
        ("JPEG XL", rb"\xff\x0a|\x00\x00\x00\x0cJXL "),
        ("QOI", rb"qoif"),
        ("DDS", rb"DDS "),
        ("OpenEXR", rb"v/1\x01"),
        ("PBM/PGM/PPM", rb"P[1-7]\s"),
    )
)


def sniff_unsupported(data: bytes) -> str | None:
    """The name of the unsupported format `data` starts like, if it is a well-known one."""
    head = data[:1024]
    for name, pattern in _OTHER_FORMATS:
        if pattern.match(head.lower() if name == "SVG" else head):
            return name
    return None


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096


def read_image(path: Path, limits: ImageLimits) -> Image.Image:
    """Decode the uploaded file at `path`, checking its size before reading it."""
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ImageTooLarge(f"the image is {size:,} bytes; the limit is {limits.max_bytes:,}")
    return decode_image(path.read_bytes(), limits)


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Bytes of a PNG, JPEG, BMP, GIF (first frame) or WebP file to a loaded PIL image.

    Raises `ImageError` (or its `ImageTooLarge`, `UnsupportedFormat`) with a client-facing
    message for empty, oversized, unknown, unsupported, truncated or corrupt input.
    """
    if not data:
        raise ImageError("the image is empty: upload a PNG, JPEG, BMP, GIF or WebP file")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"the image is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    image = _open(data, limits)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,}"
        )
    if width == 0 or height == 0:
        raise ImageError(f"the image is {width}x{height}: it has no pixels")
    if image.mode not in MODES:
        raise ImageError(f"image mode {image.mode} is not supported; use one of {', '.join(MODES)}")
    _load(image)
    return image


def header_pixels(data: bytes) -> int | None:
    """Width x height as the image's header gives them (~10 us for a digit's PNG: Pillow reads
    the header and its text chunks, not the pixels), or None when no supported decoder reads
    it: how many pixels decoding `data` would make, known before."""
    try:
        width, height = _open(data, ImageLimits()).size
    except ImageError:
        return None
    return width * height


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Read only the header, with the decoders limited to `FORMATS`."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # Pillow's own, far higher limit
        raise ImageTooLarge(
            f"the image has too many pixels; the limit is {limits.max_pixels:,}"
        ) from None
    except UnidentifiedImageError:
        other = sniff_unsupported(data)
        if other is not None:
            raise UnsupportedFormat(
                f"{other} is not supported: upload a PNG, JPEG, BMP, GIF or WebP file"
            ) from None
        raise ImageError(
            f"the upload is not an image in a supported format ({', '.join(FORMATS)})"
        ) from None
    except Exception as error:  # a malformed header can raise anything from a decoder
        raise ImageError(f"the image header could not be read: {error}") from None


def _load(image: Image.Image) -> None:
    """Decode the pixels (the first frame of an animation), turning decoder failures into
    `ImageError`: truncated and corrupt files raise OSError, SyntaxError, ValueError or
    zlib and struct errors depending on the format."""
    try:
        image.seek(0)
        image.load()
    except Exception as error:
        raise ImageError(
            f"the image could not be decoded (truncated or corrupt): {error}"
        ) from None


def batch_from_array(values: Any, max_images: int) -> np.ndarray:
    """Check a client's digits (an array or nested lists) and make them float32 (N, 1, 28, 28)
    in [0, 1].

    Accepts (N, 28, 28) or (N, 1, 28, 28), integers 0-255 or floats 0-1: integers keep MNIST's
    uint8 meaning, and the float conversion is the one `normalize` does, so both give the
    model the same input. Raises `ImageError` naming what is wrong.
    """
    try:
        images = np.asarray(values)
    except (ValueError, TypeError):
        raise ImageError(
            "must be nested lists of numbers shaped (N, 28, 28) or (N, 1, 28, 28); "
            "got ragged or mixed nesting"
        ) from None
    if images.dtype.kind not in "iuf":
        raise ImageError(
            f"must hold numbers (integers 0-255 or floats 0-1), got {_dtype_name(images)}"
        )
    expected = (1, *INPUT_SHAPE[1:])
    shape = tuple(images.shape)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ImageError(f"must be shaped (N, 28, 28) or (N, 1, 28, 28), got {shape}")
    if len(images) == 0:
        raise ImageError("must hold at least one image")
    if len(images) > max_images:
        raise ImageError(f"holds {len(images):,} images; the limit is {max_images:,} per request")
    if images.dtype.kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ImageError(f"integer pixels must be 0-255, got values from {low} to {high}")
        return images.astype(np.float32) / np.float32(255)
    if not np.isfinite(images).all():
        raise ImageError("must not hold NaN or infinity")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ImageError(
            f"float pixels must be in [0, 1], got values from {low:g} to {high:g} "
            "(send integers for 0-255)"
        )
    return images.astype(np.float32)


def _dtype_name(images: np.ndarray) -> str:
    kinds = {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or nested values"}
    return kinds.get(images.dtype.kind, str(images.dtype))
