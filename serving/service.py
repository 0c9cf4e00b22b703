"""The champion CNN as a BentoML 1.4 service: predictions, and a look inside the network.

    bentoml serve serving.service:ConvLens        (or `make serve`)

The model comes from the BentoML model store (`make package` imports the MLflow champion
there): an architecture JSON and safetensors weights, rebuilt as a plain `ConvNet` after
checking the weights' sha256 against the registered one. Nothing is unpickled. Without a
usable model (none in the store, weights that fail the check) the service still starts, and
`/readyz` and every API answer 503 with the reason, so the failure is visible from outside.

Every error is answered with the body {"error": "<what was wrong>"}: 400 bad input, 413 over a
size limit, 415 an unsupported format, 422 an image with no digit in it, 429 too many requests
in flight, 503 no usable model or overloaded. `JSONErrors` below keeps BentoML's own errors in
that shape too, enforces the body limit before the body is read, and serves the OpenAPI
document with those answers described (`openapi_document`). Settings live in `config.yaml`.
"""

from __future__ import annotations

import base64
import copy
import functools
import gc
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
import pydantic
import torch
import yaml
from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
from bentoml.exceptions import BentoMLException
from PIL import Image
from pydantic import BaseModel, BeforeValidator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from convlens.images import (
    FORMATS,
    MODES,
    ImageError,
    ImageLimits,
    ImageTooLarge,
    UnsupportedFormat,
    batch_from_array,
    read_image,
)
from convlens.kernels import KERNELS, convolve2d, max_pool, relu
from convlens.model import ConvNet, activations, describe
from convlens.preprocessing import INPUT_SHAPE, NoDigitError, normalize, to_mnist
from convlens.visuals import feature_map_grid, filter_grid, grid
from convlens.weights import WeightsMismatch, load_weights
from serving.ui_app import ui_app

CONFIG_FILE = Path(__file__).with_name("config.yaml")
logger = logging.getLogger("convlens.serving")
# Pillow warns above 89 Mpx; `convlens.images` refuses anything over the configured limit from
# the header already, so the warning would only add noise to the log.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingConfig:
    model: str
    workers: int
    threads: int
    torch_threads: int
    timeout_s: float
    max_in_flight_per_thread: int
    requests_per_connection: int
    access_log: bool
    metrics: bool
    max_batch_size: int
    max_latency_ms: int
    max_request_bytes: int
    max_batch_images: int
    image_limits: ImageLimits

    @property
    def max_concurrency(self) -> int:
        """Requests in flight (running or waiting) in the whole service; BentoML gives each
        worker its share, threads x max_in_flight_per_thread, and answers 429 beyond it."""
        return self.workers * self.threads * self.max_in_flight_per_thread

    @classmethod
    def load(cls, path: Path = CONFIG_FILE, env: Mapping[str, str] | None = None) -> ServingConfig:
        """`config.yaml`, with CONVLENS_MODEL and CONVLENS_WORKERS from the environment on top."""
        env = os.environ if env is None else env
        raw = yaml.safe_load(path.read_text())
        workers = env.get("CONVLENS_WORKERS") or raw["workers"]
        limits = raw["limits"]
        return cls(
            model=env.get("CONVLENS_MODEL") or raw["model"],
            workers=cpu_count() if workers == "cpu_count" else int(workers),
            threads=int(raw["threads"]),
            torch_threads=int(raw["torch_threads"]),
            timeout_s=float(raw["timeout_s"]),
            max_in_flight_per_thread=int(raw["max_in_flight_per_thread"]),
            requests_per_connection=int(raw["requests_per_connection"]),
            access_log=bool(raw["access_log"]),
            metrics=bool(raw["metrics"]),
            max_batch_size=int(raw["batching"]["max_batch_size"]),
            max_latency_ms=int(raw["batching"]["max_latency_ms"]),
            max_request_bytes=int(limits["max_request_bytes"]),
            max_batch_images=int(limits["max_batch_images"]),
            image_limits=ImageLimits(
                max_bytes=int(limits["max_image_bytes"]),
                max_pixels=int(limits["max_image_pixels"]),
            ),
        )


def cpu_count() -> int:
    """The CPUs BentoML would start `cpu_count` workers for (container limits respected)."""
    from bentoml._internal.resource import system_resources

    return max(1, int(system_resources()["cpu"]))


CONFIG = ServingConfig.load()


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    net: ConvNet
    tag: str
    name: str
    version: str
    run_id: str
    test_accuracy: float | None
    weights_sha256: str


def load_model(folder: Path, labels: dict[str, str], tag: str) -> LoadedModel:
    """Rebuild the network from a stored model's weights and architecture, refusing weights
    that are not the registered ones (`convlens.weights.WeightsMismatch`).

    The expected digest is the registered version's `weights_sha256`, copied into the model's
    labels by `make package`, so a file changed after registration never serves.
    """
    expected = labels.get("weights_sha256")
    if not expected:
        raise RuntimeError(f"{tag} has no weights_sha256 label: package it with `make package`")
    net = load_weights(folder, expected_sha256=expected)
    accuracy = labels.get("test_acc")
    return LoadedModel(
        net=net.to(memory_format=torch.channels_last),
        tag=tag,
        name=labels.get("mlflow_model", tag.split(":")[0]),
        version=labels.get("mlflow_version", ""),
        run_id=labels.get("mlflow_run_id", ""),
        test_accuracy=float(accuracy) if accuracy else None,
        weights_sha256=expected,
    )


class ModelUnavailable(RuntimeError):
    """No usable model; the message is safe to show to clients (no paths, no digests)."""


class ModelStatus:
    """This worker's model, or why it has none. One per process, shared by the service
    instance and the middleware; set once, when the service starts."""

    def __init__(self) -> None:
        self.model: LoadedModel | None = None
        self.problem: str | None = "the model is still loading"

    def loaded(self, model: LoadedModel) -> None:
        self.model, self.problem = model, None

    def failed(self, problem: str) -> None:
        self.model, self.problem = None, problem

    @property
    def error(self) -> str:
        return f"no usable model: {self.problem}"


MODEL_STATUS = ModelStatus()


def declared_model(tag: str) -> bentoml.models.BentoModel | None:
    """The model for BentoML to record in the Bento: declared only when the store has it.

    `bentoml serve` resolves every declared model before it starts a worker, and without a
    local copy it would try BentoCloud and exit; undeclared, the service starts and reports
    what is missing (`open_model`).
    """
    try:
        reference = bentoml.models.BentoModel(tag)
        return reference if reference.stored is not None else None
    except Exception:  # an invalid tag: open_model says so
        return None


def open_model(tag: str) -> LoadedModel:
    """The model `tag` from the BentoML store, checked; `ModelUnavailable` says why not."""
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise ModelUnavailable(
            f"{tag} is not in the BentoML model store: import one with `make package`"
        ) from None
    except Exception as error:
        logger.exception("cannot read %s from the BentoML model store", tag)
        raise ModelUnavailable(
            f"{tag} cannot be read from the BentoML model store: {error}"
        ) from None
    try:
        return load_model(Path(stored.path), stored.info.labels, str(stored.tag))
    except WeightsMismatch as error:
        logger.error("refusing %s: %s", stored.tag, error)
        raise ModelUnavailable(
            f"the weights of {stored.tag} do not match the registered sha256 "
            "(changed after registration, or corrupt): refusing to load them"
        ) from None
    except Exception as error:
        logger.exception("cannot load %s", stored.tag)
        raise ModelUnavailable(
            f"{stored.tag} cannot be loaded ({type(error).__name__}): see the server log"
        ) from None


def limit_torch_threads(threads: int) -> None:
    """One intra-op thread per worker: parallelism comes from workers, not from threads that
    would oversubscribe the cores the workers share."""
    torch.set_num_threads(threads)
    # Only settable before the first inter-op parallel work; if that happened, keep it.
    with suppress(RuntimeError):
        torch.set_num_interop_threads(threads)


# --- client errors ---------------------------------------------------------------------------


class ClientError(BentoMLException):
    """A request the service cannot answer; BentoML replies with `error_code` (400 default)."""

    error_code = HTTPStatus.BAD_REQUEST


@contextmanager
def client_errors() -> Iterator[None]:
    """Turn the library's input errors into `ClientError`s with their HTTP status."""
    try:
        yield
    except ImageTooLarge as error:
        raise ClientError(str(error), error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
    except UnsupportedFormat as error:
        raise ClientError(str(error), error_code=HTTPStatus.UNSUPPORTED_MEDIA_TYPE) from None
    except ImageError as error:
        raise ClientError(str(error)) from None
    except NoDigitError as error:
        raise ClientError(str(error), error_code=HTTPStatus.UNPROCESSABLE_ENTITY) from None


def error_message(payload: Any) -> str:
    """The message of one of BentoML 1.4's error bodies, whatever its shape.

    BentoML answers a 4xx `BentoMLException` with `[{"error": ...}]` (a list) and a pydantic
    validation failure with `{"error": "1 validation error for Input", "detail": [...]}`, where
    only `detail` says what was wrong.
    """
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]
    if isinstance(payload, dict):
        detail = payload.get("detail")
        if isinstance(detail, list) and detail:
            return "; ".join(_validation_message(item) for item in detail)
        if "error" in payload:
            return str(payload["error"])
    return str(payload)


def _validation_message(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
    location = ".".join(str(part) for part in item.get("loc", ()))
    return f"{location}: {message}" if location else message


class JSONErrors:
    """ASGI middleware, inside BentoML's concurrency limit: the service's answers before and
    around BentoML's.

    - Every error answer of an API route has the body {"error": "..."}, BentoML's included.
    - A request body over `max_body_bytes` is refused with 413 before it is read: at once from
      Content-Length; without one (chunked), by counting the bytes as they arrive and ending
      the body for BentoML at the limit. Nothing over the limit is buffered: uvicorn drops the
      rest of a body the app did not read.
    - Without a usable model, `/readyz` and every API route answer 503 with the reason, before
      reading the request.
    - `/docs.json` is the OpenAPI document with the answers above described (`openapi`).
    """

    def __init__(
        self,
        app: Any,
        routes: Collection[str],
        max_body_bytes: int,
        status: ModelStatus,
        openapi: Callable[[], bytes],
    ):
        self.app = app
        self.routes = set(routes)
        self.max_body_bytes = max_body_bytes
        self.status = status
        self.openapi = openapi

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/docs.json" and scope["method"] in ("GET", "HEAD"):
            await _send(send, HTTPStatus.OK, self.openapi())
            return
        if path == "/readyz" and self.status.problem is not None:
            await _send_error(send, HTTPStatus.SERVICE_UNAVAILABLE, self.status.error)
            return
        if path not in self.routes:
            await self.app(scope, receive, send)
            return
        if self.status.problem is not None:
            await _send_error(send, HTTPStatus.SERVICE_UNAVAILABLE, self.status.error)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await _send_error(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._too_large(length))
            return
        state = {"received": 0, "too_large": False, "start": None, "chunks": []}

        async def counting_receive() -> dict:
            if state["too_large"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    state["too_large"] = True
                    return {"type": "http.disconnect"}  # BentoML stops reading the body
            return message

        async def rewriting_send(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                await send(message)
            elif message["type"] == "http.response.start":
                state["start"] = message
            elif message["type"] == "http.response.body" and state["start"] is not None:
                state["chunks"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_rewritten(send, state)
            else:
                await send(message)

        await self.app(scope, counting_receive, rewriting_send)

    async def _send_rewritten(self, send: Any, state: dict) -> None:
        status = state["start"]["status"]
        if state["too_large"]:
            status, message = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._too_large(None)
        elif status == HTTPStatus.SERVICE_UNAVAILABLE:
            # BentoML's 503s (adaptive batching's queue is full) say nothing specific.
            message = self.status.error if self.status.problem else OVERLOADED
        else:
            body = b"".join(state["chunks"])
            try:
                message = error_message(json.loads(body))
            except ValueError:
                message = body.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase
        headers = [
            (key, value)
            for key, value in state["start"].get("headers", [])
            if key.lower() not in (b"content-length", b"content-type")
        ]
        await _send_error(send, status, message, headers)

    def _too_large(self, length: int | None) -> str:
        size = f"{length:,} bytes" if length is not None else "too large"
        return f"the request body is {size}; the limit is {self.max_body_bytes:,} bytes"


OVERLOADED = "the service is overloaded: retry in a moment"


class SpreadConnections:
    """ASGI middleware: while a worker has other requests in flight, every `every`-th answer
    closes its keep-alive connection.

    The workers share one listening socket, and the first to wake accepts every connection
    pending at that moment, so clients that connect together (a connection pool, a load
    balancer) can all land on one worker while the others idle, for as long as they keep
    their connections. A closed connection makes its client reconnect, and the new one goes
    to whichever worker accepts it first, often another one: within a few seconds every
    worker has work. A worker serving one request at a time has nothing to hand over, so a
    lone client keeps its connection (the first request on a new one sometimes takes tens of
    milliseconds).
    """

    def __init__(self, app: Any, every: int):
        self.app = app
        self.every = every
        self.answered = 0
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.answered += 1
        self.in_flight += 1
        try:
            if self.answered % self.every or self.in_flight == 1:
                await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, _closing(send))
        finally:
            self.in_flight -= 1


def _closing(send: Any) -> Callable[[dict], Any]:
    """`send`, with `Connection: close` added to the answer's headers."""

    async def closing_send(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"connection", b"close")]
            message = {**message, "headers": headers}
        await send(message)

    return closing_send


def _content_length(scope: dict) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send(
    send: Any,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        *(headers or []),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": int(status), "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """The one error shape; an overloaded 503 says when to retry."""
    headers = list(headers or [])
    if message == OVERLOADED:
        headers.append((b"retry-after", b"1"))
    await _send(send, status, json.dumps({"error": message}).encode(), headers)


def is_client_error(error: BaseException | None) -> bool:
    """Bad input, a 4xx BentoML error, or a client that went away mid-request."""
    if isinstance(error, pydantic.ValidationError | ClientDisconnect):
        return True
    return isinstance(error, BentoMLException) and error.error_code < 500


class QuietClientErrors(logging.Filter):
    """BentoML logs every exception an API raises at ERROR with a traceback; a client's bad
    input is not a server fault, so it becomes one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if is_client_error(error):
            record.msg = f"{record.getMessage()}: client error: {error}".replace("\n", " ")
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietClientErrors())


class UploadsOnly(MultipartSerde):
    """BentoML's form parsing, minus three ways a malformed form became a 500.

    BentoML 1.4 treats a file field sent as text (`curl -F image=digit.png`, without the @)
    as a URL and fetches it from the server, which is a request on the client's behalf to
    wherever it points, and fails with a 500 here; it JSON-decodes a text field sent as a
    file, which fails with a 500 on binary content; and Starlette's 400 for malformed
    multipart data reaches BentoML as an unknown exception. All are refused as 400s instead.
    """

    @staticmethod
    async def ensure_file(obj: str | UploadFile) -> UploadFile:
        if isinstance(obj, UploadFile):
            return obj
        raise ClientError(
            "image must be uploaded as a file (multipart/form-data), not sent as text or a URL"
        )

    async def parse_request(self, request: Any, cls: Any) -> Any:
        try:
            form = await request.form()  # Starlette caches it for the parse below
        except HTTPException as error:  # malformed multipart data: Starlette's 400
            raise ClientError(
                f"malformed form data: {error.detail}", error_code=HTTPStatus(error.status_code)
            ) from None
        for key, value in form.multi_items():
            if key not in cls.multipart_fields and isinstance(value, UploadFile):
                raise ClientError(f"{key} must be a text field, not a file")
        return await super().parse_request(request, cls)


for _media_type, _serde in list(ALL_SERDE.items()):
    if _serde is MultipartSerde:
        ALL_SERDE[_media_type] = UploadsOnly


# --- request and response shapes -------------------------------------------------------------


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


# --- rendering -------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_response(image: Image.Image, headers: dict[str, str] | None = None) -> Response:
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


# --- the OpenAPI document --------------------------------------------------------------------

ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what was wrong"}},
    "additionalProperties": False,
}
ERROR_ANSWERS = {
    400: "Bad input: not an image, empty, truncated or corrupt; a missing or malformed field; "
    "an array of the wrong shape or type, NaN or infinity, values out of range.",
    413: "Over a limit: request body, image file size, image pixels (read from the header "
    "before decoding), images per batch request.",
    415: "Unsupported format: an image or document that is not PNG, JPEG, BMP, GIF or WebP "
    "(TIFF, PDF, SVG, ...), or a pickle body.",
    422: "The image has no digit in it (blank, or no contrast).",
    429: "Too many requests in flight: retry later.",
    500: "Unexpected server error (a bug: see the server log).",
    503: "No usable model (the message says why; /readyz answers 503 too), or overloaded "
    "(with Retry-After).",
    504: "Not answered within the configured timeout.",
}
DIGIT = {"type": "array", "minItems": 28, "maxItems": 28}
DIGIT["items"] = {**DIGIT, "items": {"type": "number", "minimum": 0, "maximum": 255}}
PREDICT_BATCH_IMAGES = {
    "title": "Images",
    "description": "(N, 28, 28) or (N, 1, 28, 28), 1 <= N <= the batch limit: integers 0-255 "
    "or floats 0-1 (one kind per request), white digit on black like MNIST.",
    "anyOf": [
        {"type": "array", "minItems": 1, "maxItems": CONFIG.max_batch_images, "items": DIGIT},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": CONFIG.max_batch_images,
            "items": {"type": "array", "minItems": 1, "maxItems": 1, "items": DIGIT},
        },
    ],
}
PNG_ANSWER = {"schema": {"type": "string", "format": "binary"}}
IMAGE_TYPES = ", ".join(f"image/{name.lower()}" for name in FORMATS)


def _error_responses() -> dict[str, Any]:
    reference = {"$ref": "#/components/schemas/Error"}
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": reference}},
        }
        for status, description in ERROR_ANSWERS.items()
    }


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


def openapi_document(spec: dict[str, Any], net: ConvNet | None = None) -> dict[str, Any]:
    """BentoML's OpenAPI document, corrected to what the service really answers: the error
    shape and statuses above instead of BentoML's (which this service never sends), the PNG
    answers of /feature_maps and /filters, the image formats uploads take, the array shape
    /predict_batch takes, the bounds of a prediction, and the layer names of `net`."""
    spec = json.loads(json.dumps(spec))  # a plain copy, status codes as strings
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(unused, None)
    schemas["Error"] = copy.deepcopy(ERROR_SCHEMA)
    for path, item in spec["paths"].items():
        operation = item.get("post")
        if operation is None or "x-bentoml-name" not in operation:
            continue
        operation["responses"] = {"200": operation["responses"]["200"], **_error_responses()}
        body = operation.get("requestBody", {}).get("content", {})
        if any(media.get("schema", {}).get("required") for media in body.values()):
            operation["requestBody"]["required"] = True
        if path in ("/feature_maps", "/filters"):
            operation["responses"]["200"]["content"]["image/png"] = copy.deepcopy(PNG_ANSWER)
        if path == "/feature_maps":
            operation["responses"]["200"]["headers"] = {
                "X-Predicted-Label": {
                    "description": "the predicted digit, with format=png",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 9},
                }
            }
        if path == "/predict_batch":
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            body["properties"]["images"] = copy.deepcopy(PREDICT_BATCH_IMAGES)
            schemas.get("predict_batch__Input", {}).get("properties", {}).pop("images", None)
        form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if form and "image" in form["schema"].get("properties", {}):
            form.setdefault("encoding", {})["image"] = {"contentType": IMAGE_TYPES}
        layers = {"/feature_maps": "spatial_layer_names", "/filters": "conv_layer_names"}
        if net is not None and path in layers:
            names = getattr(net, layers[path])()
            for media in operation["requestBody"]["content"].values():
                media["schema"]["properties"]["layer"]["enum"] = names
    spec["paths"]["/readyz"]["get"]["responses"]["503"] = {
        "description": "Not ready: no usable model (the message says why).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    _tighten_predictions(spec)
    return spec


@functools.cache
def openapi_json() -> bytes:
    """Built on first request: the model, whose layers it names, has loaded (or failed) by then."""
    model = MODEL_STATUS.model
    spec = openapi_document(ConvLens.openapi_spec.asdict(), model.net if model else None)
    return json.dumps(spec).encode()


# --- the service -----------------------------------------------------------------------------


@bentoml.asgi_app(ui_app, path="/ui")
@bentoml.service(
    name="convlens",
    description=(
        "Classify handwritten digits with the registered champion CNN, and see its filters "
        'and feature maps. Errors: the JSON body {"error": "..."} with 400 bad input, 413 over '
        "a size limit, 415 unsupported format, 422 no digit in the image, 429 too many "
        "requests in flight, 503 no usable model or overloaded. The web page is at /ui/."
    ),
    workers=CONFIG.workers,
    threads=CONFIG.threads,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    logging={"access": {"enabled": CONFIG.access_log}},
    metrics={"enabled": CONFIG.metrics},
)
class ConvLens:
    """Classify handwritten digits and show what the CNN computes on them."""

    # Recorded in the Bento by `make package`; None when the store lacks it (`declared_model`).
    bento_model = declared_model(CONFIG.model)

    def __init__(self) -> None:
        """Load the model, or record why there is none: the process starts either way and
        answers 503 with the reason instead of exiting (a restart would not help)."""
        limit_torch_threads(CONFIG.torch_threads)
        self.limits = CONFIG.image_limits
        try:
            model = open_model(CONFIG.model)
            self._warm_up(model)
        except ModelUnavailable as error:
            MODEL_STATUS.failed(str(error))
            logger.error("%s; /readyz and the API answer 503 until fixed", MODEL_STATUS.error)
        else:
            MODEL_STATUS.loaded(model)
        # The ~250k objects of torch, BentoML and pydantic are here for good: moved out of the
        # collector's sight, a full collection no longer stalls every request for ~130 ms.
        gc.collect()
        gc.freeze()

    @classmethod
    def _warm_up(cls, model: LoadedModel) -> None:
        """One forward pass before the first request; a model that fails it is unusable."""
        try:
            cls._forward_with(model.net, torch.zeros(1, *INPUT_SHAPE))
        except Exception as error:
            logger.exception("%s fails on a blank input", model.tag)
            raise ModelUnavailable(
                f"{model.tag} fails on a blank input ({type(error).__name__}): see the log"
            ) from None

    def __is_ready__(self) -> bool:
        """BentoML's readiness hook (`/readyz`); `JSONErrors` answers with the reason first."""
        return MODEL_STATUS.model is not None

    # helpers

    @property
    def model(self) -> LoadedModel:
        model = MODEL_STATUS.model
        if model is None:  # `JSONErrors` answers before this; a 503 all the same
            raise ClientError(MODEL_STATUS.error, error_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return model

    @property
    def net(self) -> ConvNet:
        return self.model.net

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for uint8 or [0, 1] float images, (N, 28, 28) or (N, 1, 28, 28)."""
        return self._forward_with(self.net, images)

    @staticmethod
    @torch.inference_mode()
    def _forward_with(net: ConvNet, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images).contiguous(memory_format=torch.channels_last)
        return torch.softmax(net(x), dim=1)

    def _digit(self, image: Path) -> np.ndarray:
        """The upload as the 28x28 uint8 digit the model sees (`to_mnist` does the work)."""
        with client_errors():
            return to_mnist(read_image(image, self.limits))

    def _check_layer(self, layer: str, allowed: list[str], what: str) -> None:
        if layer not in allowed:
            raise ClientError(f"unknown {what} layer {layer!r}: choose one of {', '.join(allowed)}")

    def _ref(self) -> ModelRef:
        return ModelRef(name=self.model.name, version=self.model.version)

    # endpoints

    @bentoml.api
    def predict(self, image: Path) -> ImagePrediction:
        """Classify one uploaded digit (PNG, JPEG, BMP, GIF or WebP; any size; L, RGB, RGBA or P).

        Light or dark background, centred or not: it is made to look like MNIST first.
        """
        digit = torch.from_numpy(self._digit(image))[None]
        probabilities = self._forward(digit)[0]
        return ImagePrediction(
            label=int(probabilities.argmax()),
            probabilities=probabilities.tolist(),
            model=self._ref(),
        )

    @bentoml.api(
        batchable=True,
        max_batch_size=CONFIG.max_batch_size,
        max_latency_ms=CONFIG.max_latency_ms,
    )
    def predict_batch(self, images: ImageArray) -> list[Prediction]:
        """Classify digits already in MNIST form: {"images": [...]} shaped (N, 28, 28) or
        (N, 1, 28, 28), integers 0-255 or floats 0-1. One prediction per image, in order.

        Concurrent requests are batched into one forward pass (adaptive batching).
        """
        probabilities = self._forward(torch.from_numpy(images))
        return [
            Prediction(label=int(row.argmax()), probabilities=row.tolist()) for row in probabilities
        ]

    @bentoml.api
    def feature_maps(self, image: Path, layer: str, format: Format = "png") -> FeatureMaps:
        """What a conv or pooling layer outputs for the uploaded digit: a PNG grid of all
        channels (predicted label in the X-Predicted-Label header), or the activations as JSON."""
        self._check_layer(layer, self.net.spatial_layer_names(), "conv or pooling")
        x = torch.from_numpy(self._digit(image))[None]
        last = self.net.layer_names[-1]
        with torch.inference_mode():
            x = normalize(x).contiguous(memory_format=torch.channels_last)
            outputs = activations(self.net, x, [layer, last])
        maps = outputs[layer][0].contiguous().numpy()
        label = int(outputs[last][0].argmax())
        if format == "png":
            return png_response(feature_map_grid(maps), {"X-Predicted-Label": str(label)})
        return FeatureMaps(
            layer=layer, shape=list(maps.shape), label=label, activations=maps.tolist()
        )

    @bentoml.api
    def filters(self, layer: str, format: Format = "png") -> Filters:
        """The learned kernels of a conv layer: a PNG grid, or the weights as JSON."""
        self._check_layer(layer, self.net.conv_layer_names(), "conv")
        weights = getattr(self.net, layer).weight.detach().contiguous().numpy()
        if format == "png":
            return png_response(filter_grid(weights))
        return Filters(layer=layer, shape=list(weights.shape), weights=weights.tolist())

    @bentoml.api
    def preprocessed(self, image: Path) -> PNG:
        """The 28x28 grayscale PNG the model sees for the uploaded image."""
        return png_response(Image.fromarray(self._digit(image)))

    @bentoml.api
    def building_blocks(self, image: Path, kernel: KernelName) -> BuildingBlocks:
        """The tutorial's conv block by hand on the uploaded digit: convolve with a classic
        kernel, ReLU, 2x2 max pooling; each stage as values and as a PNG data URL."""
        digit = self._digit(image).astype(np.float32) / 255
        weights = KERNELS[kernel]
        convolved = convolve2d(digit, weights)
        rectified = relu(convolved)
        return BuildingBlocks(
            kernel=kernel,
            weights=weights.tolist(),
            steps={
                "input": step(digit),
                "conv": step(convolved),
                "relu": step(rectified),
                "pool": step(max_pool(rectified)),
            },
        )

    @bentoml.api
    def model_info(self) -> dict[str, Any]:
        """Which model is serving (registry name, version, run, test accuracy), its layers with
        output shapes and parameter counts, and what the endpoints accept."""
        layers = describe(self.net)
        return {
            "name": self.model.name,
            "version": self.model.version,
            "run_id": self.model.run_id,
            "test_accuracy": self.model.test_accuracy,
            "bento_model": self.model.tag,
            "weights_sha256": self.model.weights_sha256,
            "parameters": sum(row["parameters"] for row in layers),
            "layers": layers,
            "feature_map_layers": self.net.spatial_layer_names(),
            "filter_layers": self.net.conv_layer_names(),
            "kernels": list(KERNELS),
            "input": {
                "shape": list(self.net.architecture["input_shape"]),
                "image": {
                    "formats": list(FORMATS),
                    "modes": list(MODES),
                    "max_bytes": self.limits.max_bytes,
                    "max_pixels": self.limits.max_pixels,
                },
                "array": {
                    "shapes": ["(N, 28, 28)", "(N, 1, 28, 28)"],
                    "values": "integers 0-255 or floats 0-1",
                    "max_images": CONFIG.max_batch_images,
                },
                "max_request_bytes": CONFIG.max_request_bytes,
            },
            "traffic": {
                "workers": CONFIG.workers,
                "threads_per_worker": CONFIG.threads,
                "max_concurrency": CONFIG.max_concurrency,
                "timeout_s": CONFIG.timeout_s,
            },
        }


ConvLens.add_asgi_middleware(
    JSONErrors,
    routes=[method.route for method in ConvLens.apis.values()],
    max_body_bytes=CONFIG.max_request_bytes,
    status=MODEL_STATUS,
    openapi=openapi_json,
)
ConvLens.add_asgi_middleware(SpreadConnections, every=CONFIG.requests_per_connection)
