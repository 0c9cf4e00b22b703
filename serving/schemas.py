"""The shapes of the service's requests and answers, as BentoML reads them from type hints.

BentoML builds each API's input model and the OpenAPI document from these annotations and
pydantic models. What an annotation cannot say, the JSON Schema beside it does
(`BATCH_IMAGES_SCHEMA`, put into the document by `serving.openapi`): it must admit exactly
what `convlens.images.batch_from_array` accepts, since clients and fuzzers trust it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
from pydantic import BaseModel, BeforeValidator, Field

from convlens.attribution import METHODS as ATTRIBUTION_METHODS
from convlens.feedback import MAX_MODEL_VERSION
from convlens.images import ImageError, batch_from_array
from convlens.kernels import KERNELS
from serving.settings import CONFIG


def _checked_batch(images: Any) -> np.ndarray:
    """One request's images (nested lists from JSON), checked and converted before adaptive
    batching merges requests: a bad request must fail alone, and the merged array needs one
    dtype and shape. Runs before BentoML's own array conversion, which then keeps the result."""
    try:
        return batch_from_array(images, CONFIG.max_batch_images)
    except ImageError as error:  # pydantic reports ValueError as a validation error (400)
        raise ValueError(str(error)) from None


ImageArray = Annotated[np.ndarray, BeforeValidator(_checked_batch)]
Format = Literal["png", "json"]
PNG = Annotated[Path, bentoml.validators.ContentType("image/png")]  # documents a PNG answer
KernelName = Literal[tuple(KERNELS)]


def _images(pixel: dict[str, Any], title: str) -> dict[str, Any]:
    """(N, 28, 28) or (N, 1, 28, 28) arrays of `pixel`, 1 <= N <= the batch limit."""
    row = {"type": "array", "minItems": 28, "maxItems": 28, "items": pixel}
    digit = {"type": "array", "minItems": 28, "maxItems": 28, "items": row}
    channel = {"type": "array", "minItems": 1, "maxItems": 1, "items": digit}
    batch = {"type": "array", "minItems": 1, "maxItems": CONFIG.max_batch_images}
    return {"title": title, "anyOf": [{**batch, "items": digit}, {**batch, "items": channel}]}


# `batch_from_array`'s rule: the whole array is read as one numpy array, so its values are all
# JSON integers (0-255, MNIST's uint8) or, as soon as one is not an integer, all numbers in
# [0, 1]. Booleans, strings and nulls are refused. Integers 0 and 1 fit both.
BATCH_IMAGES_SCHEMA: dict[str, Any] = {
    "title": "Images",
    "description": "(N, 28, 28) or (N, 1, 28, 28), 1 <= N <= the batch limit, white digit on "
    "black like MNIST: either every value an integer 0-255, or every value a number 0-1 "
    "(one kind per request: a single non-integer makes every value a float 0-1).",
    "anyOf": [
        _images({"type": "integer", "minimum": 0, "maximum": 255}, "Integers 0-255"),
        _images({"type": "number", "minimum": 0, "maximum": 1}, "Numbers 0-1"),
    ],
}


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    label: int
    probabilities: list[float]


class ImagePrediction(Prediction):
    model: ModelRef


class FeatureMaps(BaseModel):
    layer: str
    shape: list[int]
    label: int
    activations: list[list[list[float]]]


class Filters(BaseModel):
    layer: str
    shape: list[int]
    weights: list[list[list[list[float]]]]


class Step(BaseModel):
    shape: list[int]
    min: float
    max: float
    values: list[list[float]]
    png: str


class BuildingBlocks(BaseModel):
    kernel: str
    weights: list[list[float]]
    steps: dict[str, Step]


# /explain and /receptive_field (issue 14: why the network decides, how one value comes about)
ExplainMethod = Literal[tuple(ATTRIBUTION_METHODS)]
DigitClass = Annotated[int, Field(ge=0, le=9)]
# Bounds that hold for every layer; each layer's own limits are checked by the API (400).
Index = Annotated[int, Field(ge=0, le=4095)]


class Explanation(BaseModel):
    method: str
    target: int
    label: int
    probabilities: list[float]
    shape: list[int]
    min: float
    max: float
    attributions: list[list[float]]


class Window(BaseModel):
    top: int
    left: int
    height: int
    width: int


class Contribution(BaseModel):
    in_channel: int
    contribution: float
    patch: list[list[float]]
    kernel: list[list[float]]


class ConvArithmetic(BaseModel):
    bias: float
    sum: float
    activation: Literal["relu", "none"]
    result: float
    in_channels: int
    patch: list[list[float]] | None = None
    kernel: list[list[float]] | None = None
    pixels: list[list[int]] | None = None
    contributions: list[Contribution] | None = None
    rest: float | None = None


class PoolArgmax(BaseModel):
    y: int
    x: int


class PoolArithmetic(BaseModel):
    window: list[list[float]]
    max: float
    argmax: PoolArgmax


class ReceptiveField(BaseModel):
    layer: str
    channel: int
    y: int
    x: int
    type: str
    value: float
    field: Window
    input: str
    input_window: Window
    conv: ConvArithmetic | None = None
    pool: PoolArithmetic | None = None


# /feedback (issue 12: what users teach back)


def _as_text(value: Any) -> Any:
    """A form field's text: BentoML reads each multipart field as JSON when it parses, so a
    version sent as "3" arrives as the number 3."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    return value


ModelVersion = Annotated[str, BeforeValidator(_as_text), Field(max_length=MAX_MODEL_VERSION)]


class FeedbackReceipt(BaseModel):
    sha256: str  # of the image as sent: the row's key; sending it again updates that row
    created: bool  # False: the image was stored before, and its label is now this one
    label: int
    message: str


# /embedding, /embed, /embedding_sprite and /top_patches (issue 14: how the network organises
# digits, what a filter looks for)
Neighbours = Annotated[int, Field(ge=1, le=50)]
# The most channels any conv layer of the served architectures has; each layer's own count is
# checked by the API (400).
Channel = Annotated[int, Field(ge=0, le=1023, strict=True)]  # JSON: true is not a channel


class Embedding(BaseModel):
    layer: str
    method: str
    count: int
    positions: list[list[float]]
    labels: list[int]
    test_indices: list[int]
    sprite_columns: int


class Neighbour(BaseModel):
    index: int
    test_index: int
    label: int
    distance: float
    position: list[float]
    png: str


class Placement(BaseModel):
    label: int
    position: list[float]
    neighbours: list[Neighbour]


class Patch(BaseModel):
    activation: float
    test_index: int
    y: int
    x: int
    window: dict[str, int]
    png: str
    context_png: str


class TopPatches(BaseModel):
    layer: str
    channel: int
    channels: int
    receptive_field: int
    patches: list[Patch]
