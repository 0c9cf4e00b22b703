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

from convlens.visuals import grid
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
