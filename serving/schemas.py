"""The shapes of the service's requests and answers, as BentoML reads them from type hints.

BentoML builds each API's input model and the OpenAPI document from these annotations and
pydantic models. What an annotation cannot say, the JSON Schema beside it does
(`BATCH_IMAGES_SCHEMA`, put into the document by `serving.openapi`): it must admit exactly
what `convlens.images.batch_from_array` accepts, since clients and fuzzers trust it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
from pydantic import BaseModel, BeforeValidator

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
