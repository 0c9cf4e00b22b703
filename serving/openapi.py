"""The OpenAPI document at `/docs.json`: BentoML's, corrected to what the service answers.

BentoML documents errors this service never sends and cannot describe what its type hints do
not say (PNG answers, the image formats uploads take, the arrays `/predict_batch` takes, the
model's layer names). Clients and fuzzers (tests/test_fuzz.py) read this document, so every
request it calls valid must be accepted, and every answer must be described.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from convlens.images import FORMATS
from convlens.model import ConvNet
from serving.bentoml_private import openapi_spec
from serving.errors import ERROR_SCHEMA, error_responses
from serving.loading import ModelStatus
from serving.schemas import BATCH_IMAGES_SCHEMA

PNG_ANSWER = {"schema": {"type": "string", "format": "binary"}}
IMAGE_TYPES = ", ".join(f"image/{name.lower()}" for name in FORMATS)
ERROR_REFERENCE = "#/components/schemas/Error"
# The endpoints that show what a model may have been packaged without (`MissingInsight`, 404).
INSIGHT_PATHS = ("/embedding", "/embedding_sprite", "/embed", "/top_patches")
SERVICE_DESCRIPTION = (
    "Classify handwritten digits with the registered champion CNN, and see its filters "
    'and feature maps. Errors: the JSON body {"error": "..."} with 400 bad input, 413 over '
    "a size limit, 415 unsupported format, 422 no digit in the image, 429 too many "
    "requests in flight, 503 no usable model or overloaded. The web page is at /ui/."
)


def _tighten_predictions(node: Any) -> None:
    """Every prediction schema: a label 0-9 and ten probabilities in [0, 1]."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict) and {"label", "probabilities"} <= properties.keys():
            properties["label"].update(minimum=0, maximum=9)
            properties["probabilities"].update(minItems=10, maxItems=10)
            properties["probabilities"]["items"].update(minimum=0, maximum=1)
        for value in node.values():
            _tighten_predictions(value)
    elif isinstance(node, list):
        for value in node:
            _tighten_predictions(value)


def channels_per_layer(schema: dict[str, Any], net: ConvNet) -> dict[str, Any]:
    """/top_patches' body as one alternative per conv layer, each with its own channel bound
    (conv1 0-31, conv2 0-63): whole object schemas, which fuzzers read correctly."""
    choices = []
    for name in net.conv_layer_names():
        choice = copy.deepcopy(schema)
        choice.pop("title", None)
        choice["properties"]["layer"] = {"type": "string", "enum": [name]}
        channels = getattr(net, name).out_channels
        choice["properties"]["channel"].update(minimum=0, maximum=channels - 1)
        choice["title"] = f"{name}: channel 0-{channels - 1}"
        choices.append(choice)
    return {"title": schema.get("title", "Input"), "anyOf": choices}


def openapi_document(spec: dict[str, Any], net: ConvNet | None = None) -> dict[str, Any]:
    """BentoML's OpenAPI document, corrected to what the service really answers: the error
    shape and statuses of `serving.errors` instead of BentoML's (which this service never
    sends), the PNG answers of /feature_maps and /filters, the image formats uploads take, the
    arrays /predict_batch takes, the bounds of a prediction, and the layer names of `net`."""
    spec = json.loads(json.dumps(spec))  # a plain copy, status codes as strings
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(unused, None)
    schemas["Error"] = copy.deepcopy(ERROR_SCHEMA)
    for path, item in spec["paths"].items():
        operation = item.get("post")
        if operation is None or "x-bentoml-name" not in operation:
            continue
        ok = operation["responses"]["200"]
        operation["responses"] = {"200": ok, **error_responses(ERROR_REFERENCE)}
        if path not in INSIGHT_PATHS:
            operation["responses"].pop(str(HTTPStatus.NOT_FOUND.value), None)
        body = operation.get("requestBody", {}).get("content", {})
        if any(media.get("schema", {}).get("required") for media in body.values()):
            operation["requestBody"]["required"] = True
        if path in ("/feature_maps", "/filters", "/explain"):
            ok["content"]["image/png"] = copy.deepcopy(PNG_ANSWER)
        if path == "/feature_maps":
            ok["headers"] = {
                "X-Predicted-Label": {
                    "description": "the predicted digit, with format=png",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 9},
                }
            }
        if path == "/explain":
            ok["headers"] = {
                name: {
                    "description": f"{what}, with format=png",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 9},
                }
                for name, what in (
                    ("X-Predicted-Label", "the predicted digit"),
                    ("X-Explained-Class", "the class the map explains"),
                )
            }
        if path == "/predict_batch":
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            body["properties"]["images"] = copy.deepcopy(BATCH_IMAGES_SCHEMA)
            schemas.get("predict_batch__Input", {}).get("properties", {}).pop("images", None)
        form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if form and "image" in form["schema"].get("properties", {}):
            form.setdefault("encoding", {})["image"] = {"contentType": IMAGE_TYPES}
        layers = {
            "/feature_maps": "spatial_layer_names",
            "/filters": "conv_layer_names",
            "/receptive_field": "spatial_layer_names",
            "/top_patches": "conv_layer_names",
        }
        if net is not None and path in layers:
            names = getattr(net, layers[path])()
            for media in operation["requestBody"]["content"].values():
                media["schema"]["properties"]["layer"]["enum"] = names
        if net is not None and path == "/top_patches":
            for media in operation["requestBody"]["content"].values():
                media["schema"] = channels_per_layer(media["schema"], net)
    spec["paths"]["/readyz"]["get"]["responses"]["503"] = {
        "description": "Not ready: no usable model (the message says why).",
        "content": {"application/json": {"schema": {"$ref": ERROR_REFERENCE}}},
    }
    _tighten_predictions(spec)
    return spec


def openapi_json(service: Any, status: ModelStatus) -> Callable[[], bytes]:
    """The document of `service` as JSON bytes, built on first call: by the first request the
    model, whose layers it names, has loaded (or failed), and `status` says which."""

    @functools.cache
    def document() -> bytes:
        model = status.model
        spec = openapi_document(openapi_spec(service), model.net if model else None)
        return json.dumps(spec).encode()

    return document
