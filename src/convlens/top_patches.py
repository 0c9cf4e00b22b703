"""What a filter looks for: for every conv channel, the test-image patches that excite it most.

For each channel, every test image counts once, with its strongest response (the maximum of
the channel's feature map over positions); the nine images with the strongest responses give
the nine patches, each the receptive field of the winning position (3x3 pixels for conv1, 8x8
for conv2), as Zeiler and Fergus (2014) show them. Computed at the end of training on the run's
whole test set (held-out digits; one pass up to the last conv layer takes seconds), written to
the logged model (`TOP_PATCHES_FILE`) and drawn as one grid per layer for the run page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.artifact import TOP_PATCHES_FILE
from convlens.model import ConvNet, activations
from convlens.preprocessing import normalize
from convlens.receptive import Field, receptive_field, receptive_field_size

TOP_K = 9
GRID_COLUMNS = 16  # channel blocks per row: wide, as MLflow's image cards show whole
SEPARATOR = 150  # gray between a block's patches: neither ink (white) nor paper (black)


@dataclass(frozen=True)
class LayerPatches:
    """One conv layer's top patches; arrays are (channels, k, ...), strongest first."""

    layer: str
    size: int  # the receptive field's side in pixels (`convlens.receptive`)
    values: np.ndarray  # float32: the channel's maximum on that image
    images: np.ndarray  # int64: index of the image in the test set
    positions: np.ndarray  # int64 (C, k, 2): (y, x) of the maximum in the feature map
    patches: np.ndarray  # uint8 (C, k, size, size): the receptive field's pixels
    digits: np.ndarray  # uint8 (C, k, 28, 28): the whole digits, to show the patch in context

    @property
    def channels(self) -> int:
        return len(self.values)


def top_patches(
    net: ConvNet, images: torch.Tensor, k: int = TOP_K, batch: int = 500
) -> dict[str, LayerPatches]:
    """For every conv layer of `net`, each channel's `k` top images and patches among the uint8
    digits `images` (N, 28, 28); one forward pass per batch, keeping a running top k."""
    layers = net.conv_layer_names()
    images = torch.as_tensor(np.asarray(images))
    device = next(net.parameters()).device
    best: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    widths: dict[str, int] = {}
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = normalize(images[start : start + batch]).to(device)
            for name, maps in activations(net, x, layers).items():
                widths[name] = maps.shape[-1]
                flat = maps.float().flatten(2)  # (B, C, H*W)
                value, where = flat.max(dim=2)  # (B, C): each image's strongest response
                index = torch.arange(start, start + len(x), device=device)[:, None].expand_as(value)
                if name in best:
                    old_value, old_index, old_where = best[name]
                    value = torch.cat([old_value, value])
                    index = torch.cat([old_index, index])
                    where = torch.cat([old_where, where])
                top = value.topk(min(k, len(value)), dim=0).indices  # (k, C)
                best[name] = (value.gather(0, top), index.gather(0, top), where.gather(0, top))
    net.train(was_training)
    pixels = images.numpy()
    result = {}
    for name in layers:
        value, index, where = (t.T.cpu().numpy() for t in best[name])  # (C, k)
        width = widths[name]
        positions = np.stack([where // width, where % width], axis=-1).astype(np.int64)
        patches = np.stack(
            [
                [
                    _window(pixels[i], receptive_field(net, name, int(y), int(x)))
                    for i, (y, x) in row
                ]
                for row in (
                    zip(ri, rp, strict=True) for ri, rp in zip(index, positions, strict=True)
                )
            ]
        ).astype(np.uint8)
        result[name] = LayerPatches(
            name,
            receptive_field_size(net, name),
            value.astype(np.float32),
            index.astype(np.int64),
            positions,
            patches,
            pixels[index].astype(np.uint8),
        )
    return result


KEYS = ("values", "images", "positions", "patches", "digits")


def save(found: dict[str, LayerPatches], folder: Path) -> Path:
    """Write `found` as one npz (`TOP_PATCHES_FILE`): `<layer>/<array>` keys."""
    arrays: dict[str, np.ndarray] = {"layers": np.array(list(found))}
    for name, lp in found.items():
        arrays[f"{name}/size"] = np.array(lp.size)
        for key in KEYS:
            arrays[f"{name}/{key}"] = getattr(lp, key)
    path = Path(folder) / TOP_PATCHES_FILE
    np.savez_compressed(path, **arrays)
    return path


def load(path: Path) -> dict[str, LayerPatches]:
    with np.load(path, allow_pickle=False) as data:
        found = {}
        for name in (str(n) for n in data["layers"]):
            found[name] = LayerPatches(
                name,
                int(data[f"{name}/size"]),
                *(data[f"{name}/{key}"] for key in KEYS),
            )
        return found


def patch_picture(patch: np.ndarray, px: int = 48) -> Image.Image:
    """One patch as white-on-black MNIST pixels, enlarged to `px` without smoothing."""
    return Image.fromarray(patch).resize((px, px), Image.NEAREST)


def _window(image: np.ndarray, field: Field) -> np.ndarray:
    return image[field.top : field.top + field.size, field.left : field.left + field.size]


def in_context(image: np.ndarray, field: Field, px: int = 84) -> Image.Image:
    """The whole 28x28 digit, enlarged, with the patch's receptive field outlined in red."""
    zoom = px // image.shape[-1]
    picture = (
        Image.fromarray(image)
        .convert("RGB")
        .resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST)
    )
    top, left, end = field.top * zoom, field.left * zoom, field.size * zoom - 1
    box = (left, top, left + end, top + end)
    ImageDraw.Draw(picture).rectangle(box, outline=(230, 40, 40), width=max(1, zoom // 2))
    return picture


def layer_grid(lp: LayerPatches, tile_px: int = 24, pad: int = 2, gap: int = 6) -> Image.Image:
    """Every channel's patches as a 3x3 block (strongest top left), blocks `GRID_COLUMNS` to a
    row, numbered: the picture logged to the run for each conv layer."""
    side = math.ceil(math.sqrt(lp.patches.shape[1]))
    block = side * (tile_px + pad) - pad
    cols = min(GRID_COLUMNS, lp.channels)
    rows = math.ceil(lp.channels / cols)
    caption = 12
    canvas = Image.new("L", (cols * (block + gap) + gap, rows * (block + gap + caption) + gap), 255)
    draw = ImageDraw.Draw(canvas)
    for channel in range(lp.channels):
        r, c = divmod(channel, cols)
        x0, y0 = gap + c * (block + gap), gap + r * (block + gap + caption)
        draw.text((x0, y0), str(channel), fill=0)
        draw.rectangle((x0, y0 + caption, x0 + block - 1, y0 + caption + block - 1), fill=SEPARATOR)
        for i, patch in enumerate(lp.patches[channel]):
            pr, pc = divmod(i, side)
            position = (x0 + pc * (tile_px + pad), y0 + caption + pr * (tile_px + pad))
            canvas.paste(patch_picture(patch, tile_px), position)
    return canvas


def write(
    net: ConvNet, images: torch.Tensor, model_folder: Path, pictures_folder: Path
) -> dict[str, LayerPatches]:
    """The end of training: the file for the logged model, and `top_patches_<layer>.png` grids
    for the run page."""
    found = top_patches(net, images)
    save(found, model_folder)
    Path(pictures_folder).mkdir(parents=True, exist_ok=True)
    for name, lp in found.items():
        layer_grid(lp).save(Path(pictures_folder) / f"top_patches_{name}.png")
    return found
