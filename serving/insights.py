"""The answers of the endpoints that look inside the model (`serving.service` routes them):
its filters, feature maps and explanations of an upload, the tutorial's conv block by hand,
the embedding map and where an upload falls on it, and each conv channel's top patches.

The endpoints have checked the layer and read the upload; these build the answer."""

from __future__ import annotations

import base64

import numpy as np
import torch
from PIL import Image
from starlette.responses import Response

from convlens.attribution import attribute
from convlens.embedding import SPRITE_COLUMNS, EmbeddingMap, place, sprite
from convlens.embedding import features as embedding_features
from convlens.kernels import KERNELS, convolve2d, max_pool, relu
from convlens.model import ConvNet, activations
from convlens.receptive import OutsideLayer, explain_value, receptive_field
from convlens.top_patches import in_context, patch_picture
from convlens.visuals import feature_map_grid, filter_grid
from serving.errors import client_errors
from serving.inference import class_probabilities, model_input
from serving.loading import LoadedModel, MissingInsight, embedding_map_of, top_patches_of
from serving.rendering import attribution_overlay, png_bytes, png_response, step
from serving.schemas import (
    BuildingBlocks,
    Embedding,
    Explanation,
    FeatureMaps,
    Filters,
    Neighbour,
    Patch,
    Placement,
    ReceptiveField,
    TopPatches,
)


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def feature_maps(
    net: ConvNet, digit: np.ndarray, layer: str, format: str
) -> FeatureMaps | Response:
    """Every channel of `layer` on `digit` (28, 28): a PNG grid with the predicted label in
    X-Predicted-Label, or the activations as JSON."""
    last = net.layer_names[-1]
    with torch.inference_mode():
        outputs = activations(net, model_input(torch.from_numpy(digit)[None]), [layer, last])
    maps = outputs[layer][0].contiguous().numpy()
    label = int(outputs[last][0].argmax())
    if format == "png":
        return png_response(feature_map_grid(maps), {"X-Predicted-Label": str(label)})
    return FeatureMaps(layer=layer, shape=list(maps.shape), label=label, activations=maps.tolist())


def filters(net: ConvNet, layer: str, format: str) -> Filters | Response:
    """The learned kernels of conv `layer`: a PNG grid, or the weights as JSON."""
    weights = getattr(net, layer).weight.detach().contiguous().numpy()
    if format == "png":
        return png_response(filter_grid(weights))
    return Filters(layer=layer, shape=list(weights.shape), weights=weights.tolist())


def building_blocks(digit: np.ndarray, kernel: str) -> BuildingBlocks:
    """Convolve `digit` with a classic kernel, ReLU, 2x2 max pooling: each stage by hand."""
    scaled = digit.astype(np.float32) / 255
    weights = KERNELS[kernel]
    convolved = convolve2d(scaled, weights)
    rectified = relu(convolved)
    return BuildingBlocks(
        kernel=kernel,
        weights=weights.tolist(),
        steps={
            "input": step(scaled),
            "conv": step(convolved),
            "relu": step(rectified),
            "pool": step(max_pool(rectified)),
        },
    )


def explanation(
    net: ConvNet, digit: np.ndarray, method: str, target: int | None, format: str
) -> Explanation | Response:
    """Captum's attribution of `target` (default: the predicted class) on `digit`: a PNG
    overlay with the label and class in headers, or the values with the probabilities."""
    probabilities = class_probabilities(net, torch.from_numpy(digit)[None])[0]
    label = int(probabilities.argmax())
    target = label if target is None else target
    values = attribute(net, torch.from_numpy(digit), target, method).numpy()
    if format == "png":
        headers = {"X-Predicted-Label": str(label), "X-Explained-Class": str(target)}
        return png_response(attribution_overlay(digit, values), headers)
    return Explanation(
        method=method,
        target=target,
        label=label,
        probabilities=probabilities.tolist(),
        shape=list(values.shape),
        min=float(values.min()),
        max=float(values.max()),
        attributions=values.tolist(),
    )


@client_errors()
def receptive_field_of(
    net: ConvNet, digit: np.ndarray, layer: str, channel: int, y: int, x: int
) -> ReceptiveField:
    """How the value at (`channel`, `y`, `x`) of `layer` comes about on `digit`."""
    return ReceptiveField(**explain_value(net, torch.from_numpy(digit), layer, channel, y, x))


@client_errors()
def embedding_map(model: LoadedModel) -> EmbeddingMap:
    """The packaged map of `model`, or a 404 for a model packaged before maps existed."""
    return embedding_map_of(model)


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


def embedding_sprite(emap: EmbeddingMap) -> Response:
    """The map's digits in one PNG, in the order of `embedding`'s points."""
    return png_response(sprite(emap.sample.images))


def placement(net: ConvNet, emap: EmbeddingMap, digit: np.ndarray, neighbours: int) -> Placement:
    """Where `digit` (28, 28) falls on the map, with its nearest map digits."""
    x = torch.from_numpy(digit)[None]
    label = int(class_probabilities(net, x)[0].argmax())
    with torch.inference_mode():
        values = embedding_features(net, x)[0]
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


@client_errors()
def top_patches(model: LoadedModel, layer: str, channel: int) -> TopPatches:
    """The nine patches of `layer`'s `channel`, each alone and in its whole digit; a 404 for a
    model packaged before top patches existed."""
    found = top_patches_of(model)
    if layer not in found:
        raise MissingInsight(f"the served model has no top patches for {layer}")
    lp = found[layer]
    if channel >= lp.channels:
        raise OutsideLayer(f"channel {channel} is outside {layer}: choose 0-{lp.channels - 1}")
    patches = []
    for rank in range(lp.patches.shape[1]):
        y, x = (int(v) for v in lp.positions[channel, rank])
        field = receptive_field(model.net, layer, y, x)
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
