"""The answers of the endpoints that show what the packaged model learned: its embedding map,
where an upload falls on it, and each conv channel's top patches (`serving.service` routes)."""

from __future__ import annotations

import base64

import torch
from PIL import Image

from convlens.embedding import SPRITE_COLUMNS, EmbeddingMap, place
from convlens.embedding import features as embedding_features
from convlens.model import ConvNet
from convlens.receptive import OutsideLayer, receptive_field
from convlens.top_patches import LayerPatches, in_context, patch_picture
from serving.loading import MissingInsight
from serving.rendering import png_bytes
from serving.schemas import Embedding, Neighbour, Patch, Placement, TopPatches


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def embedding(emap: EmbeddingMap) -> Embedding:
    """The map's points, labels and test-set indices."""
    return Embedding(
        layer=emap.layer,
        method="t-SNE",
        count=len(emap.positions),
        positions=emap.positions.astype(float).round(4).tolist(),
        labels=emap.sample.labels.tolist(),
        test_indices=emap.sample.test_indices.tolist(),
        sprite_columns=SPRITE_COLUMNS,
    )


def placement(
    net: ConvNet, emap: EmbeddingMap, digit: torch.Tensor, label: int, neighbours: int
) -> Placement:
    """Where `digit` (1, 28, 28) falls on the map, with its nearest map digits."""
    with torch.inference_mode():
        values = embedding_features(net, digit)[0]
    found = place(values, emap, neighbours)
    return Placement(
        label=label,
        position=found.position.tolist(),
        neighbours=[
            Neighbour(
                index=int(i),
                test_index=int(emap.sample.test_indices[i]),
                label=int(emap.sample.labels[i]),
                distance=float(d),
                position=emap.positions[i].tolist(),
                png=data_url(Image.fromarray(emap.sample.images[i])),
            )
            for i, d in zip(found.neighbours, found.distances, strict=True)
        ],
    )


def top_patches(
    net: ConvNet, found: dict[str, LayerPatches], layer: str, channel: int
) -> TopPatches:
    """The nine patches of `layer`'s `channel`, each alone and in its whole digit."""
    if layer not in found:
        raise MissingInsight(f"the served model has no top patches for {layer}")
    lp = found[layer]
    if channel >= lp.channels:
        raise OutsideLayer(f"channel {channel} is outside {layer}: choose 0-{lp.channels - 1}")
    patches = []
    for rank in range(lp.patches.shape[1]):
        y, x = (int(v) for v in lp.positions[channel, rank])
        field = receptive_field(net, layer, y, x)
        patches.append(
            Patch(
                activation=float(lp.values[channel, rank]),
                test_index=int(lp.images[channel, rank]),
                y=y,
                x=x,
                window=field.as_dict(),
                png=data_url(patch_picture(lp.patches[channel, rank])),
                context_png=data_url(in_context(lp.digits[channel, rank], field)),
            )
        )
    return TopPatches(
        layer=layer, channel=channel, channels=lp.channels, receptive_field=lp.size, patches=patches
    )
