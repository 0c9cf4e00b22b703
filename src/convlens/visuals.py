"""Pictures of what the network learned: filter grids, feature-map grids, error galleries.

Grids are drawn with numpy and a colormap lookup table rather than a matplotlib figure, so
the service can render one per request in about a millisecond. Matplotlib is only used for
the end-of-training figures, and imported there.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

BACKGROUND = 255


@lru_cache(maxsize=4)
def colormap(name: str = "viridis") -> np.ndarray:
    """A (256, 3) uint8 lookup table for a matplotlib colormap, built once."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def _rescale(tiles: np.ndarray, per_tile: bool) -> np.ndarray:
    """Min-max scale to 0-255, per tile or over all tiles; flat tiles become mid-gray."""
    axes = tuple(range(1, tiles.ndim)) if per_tile else None
    low = tiles.min(axis=axes, keepdims=True)
    span = tiles.max(axis=axes, keepdims=True) - low
    scaled = np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1.0), 0.5)
    return (scaled * 255).round().astype(np.uint8)


def grid(
    tiles: np.ndarray,
    cols: int,
    *,
    cmap: str | None = "viridis",
    per_tile: bool = True,
    min_tile_px: int = 48,
    pad: int = 2,
) -> Image.Image:
    """Lay (N, H, W) maps out as a grid image, enlarging small tiles to stay readable."""
    tiles = np.asarray(tiles, dtype=np.float32)
    count, height, width = tiles.shape
    rows = math.ceil(count / cols)
    zoom = max(1, math.ceil(min_tile_px / max(height, width)))
    scaled = _rescale(tiles, per_tile)
    scaled = scaled.repeat(zoom, axis=1).repeat(zoom, axis=2)
    th, tw = height * zoom, width * zoom
    canvas = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad), 0, dtype=np.uint8)
    mask = np.zeros_like(canvas, dtype=bool)
    for i in range(count):
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        canvas[y : y + th, x : x + tw] = scaled[i]
        mask[y : y + th, x : x + tw] = True
    rgb = np.stack([canvas] * 3, axis=-1) if cmap is None else colormap(cmap)[canvas]
    rgb[~mask] = BACKGROUND
    return Image.fromarray(rgb, mode="RGB")


WIDE_COLUMNS = 16


def grid_columns(count: int, wide: bool = False) -> int:
    """Columns for a channel grid: 32 channels give the tutorial's 4x8, or 2x16 when `wide`."""
    return min(count, WIDE_COLUMNS if wide else 8)


def feature_map_grid(maps: np.ndarray, wide: bool = False) -> Image.Image:
    """All channels (C, H, W) of one image's activations, each scaled on its own.

    `wide` lays them out at least four times as wide as tall, the shape MLflow's image cards
    show whole under the run's params (a square grid would be cut off at the bottom)."""
    return grid(maps, grid_columns(len(maps), wide))


def filter_grid(weights: np.ndarray, wide: bool = False) -> Image.Image:
    """Kernels (out, in, kh, kw) in gray, min-max scaled over the whole layer.

    A single-input-channel layer gives the tutorial's grid of kernels; deeper layers show
    one row per filter and one column per input channel, so nothing is averaged away. With
    `wide`, one column per filter and one row per input channel, the rows folded into blocks
    side by side (inputs 0-15 | inputs 16-31) until the grid is four times as wide as tall.
    """
    out_channels, in_channels = weights.shape[:2]
    if in_channels == 1:
        return grid(weights[:, 0], grid_columns(out_channels, wide), cmap=None, per_tile=False)
    if wide:
        weights = weights.transpose(1, 0, 2, 3)
        while weights.shape[1] < 4 * weights.shape[0] and weights.shape[0] % 2 == 0:
            half = weights.shape[0] // 2
            weights = np.concatenate([weights[:half], weights[half:]], axis=1)
    rows, cols = weights.shape[:2]
    flat = weights.reshape(rows * cols, *weights.shape[2:])
    return grid(flat, cols, cmap=None, per_tile=False, min_tile_px=12, pad=1)


def digit_gallery(
    images: np.ndarray, captions: list[str], cols: int = 8, zoom: int = 3
) -> Image.Image:
    """Digits (N, 28, 28) uint8 with a caption under each, e.g. 'true 4 / pred 9'."""
    from PIL import ImageDraw

    count = len(images)
    rows = max(1, math.ceil(count / cols))
    size = images.shape[-1] * zoom
    cell_h = size + 14
    canvas = Image.new("L", (cols * (size + 4) + 4, rows * (cell_h + 4) + 4), 255)
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        r, c = divmod(i, cols)
        x, y = 4 + c * (size + 4), 4 + r * (cell_h + 4)
        canvas.paste(Image.fromarray(255 - image).resize((size, size), Image.NEAREST), (x, y))
        draw.text((x + 2, y + size + 1), caption, fill=0)
    return canvas


def confusion_figure(matrix: np.ndarray):
    """A labelled confusion-matrix heatmap (a matplotlib Figure) for the run page."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = len(matrix)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(classes),
        yticks=range(classes),
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (test set)",
    )
    threshold = matrix.max() / 2
    for t in range(classes):
        for p in range(classes):
            color = "white" if matrix[t, p] > threshold else "black"
            ax.text(p, t, str(matrix[t, p]), ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
