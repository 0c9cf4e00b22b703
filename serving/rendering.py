"""Pictures in answers: PNG responses, and the stages of the hand-made conv block.

The PNG endpoints return a Starlette `Response` directly, so BentoML sends the bytes as they
are; `/building_blocks` embeds its pictures in JSON as data URLs instead, one per stage.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from starlette.responses import Response

from convlens.visuals import colormap, grid
from serving.schemas import Step


def png_bytes(image: Image.Image) -> bytes:
    """`image` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_response(image: Image.Image, headers: dict[str, str] | None = None) -> Response:
    """An `image/png` answer of `image`, with extra `headers`."""
    return Response(png_bytes(image), media_type="image/png", headers=headers)


def step(values: np.ndarray) -> Step:
    """One stage of the hand-made conv block, with a gray picture min-max scaled like the
    filter grids (flat arrays become mid-gray)."""
    picture = grid(values[None], 1, cmap=None, per_tile=True, min_tile_px=0, pad=0)
    encoded = base64.b64encode(png_bytes(picture)).decode("ascii")
    return Step(
        shape=list(values.shape),
        min=float(values.min()),
        max=float(values.max()),
        values=values.tolist(),
        png=f"data:image/png;base64,{encoded}",
    )


OVERLAY_SCALE = 10  # 28x28 -> 280x280, each input pixel a 10x10 block
OVERLAY_CMAP = "bwr"  # diverging: blue (against) - white (0) - red (for)


def attribution_overlay(digit: np.ndarray, values: np.ndarray) -> Image.Image:
    """An attribution map over its digit: red where a pixel is evidence for the class, blue
    against, on a colour scale symmetric around 0 (the largest |value| is full colour), and
    the strength of the colour its share of that largest value, so the digit shows through
    where the evidence is weak."""
    values = np.asarray(values, dtype=np.float32)
    peak = float(np.abs(values).max())
    scaled = values / peak if peak > 0 else np.zeros_like(values)
    colours = colormap(OVERLAY_CMAP)[np.round((scaled + 1) * 127.5).astype(np.uint8)]
    gray = np.asarray(digit, dtype=np.float32)[..., None] * (0.55 / 255) + 0.2
    alpha = np.sqrt(np.abs(scaled))[..., None] * 0.9
    blended = (1 - alpha) * gray * 255 + alpha * colours
    picture = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), mode="RGB")
    size = digit.shape[1] * OVERLAY_SCALE, digit.shape[0] * OVERLAY_SCALE
    return picture.resize(size, Image.NEAREST)
