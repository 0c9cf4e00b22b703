"""Every error the service answers, in one table: exception type -> HTTP status, description.

The body is always {"error": "<what was wrong>"}. Three things are generated from `ERRORS`,
so that a status the service sends is a status its document describes, and the reverse:

- in the API methods, `client_errors()` turns the library's exceptions into `ClientError`s,
  which BentoML answers with their status (`client_error` for one raised directly);
- the middleware's own answers (`serving.middleware.JSONErrors`) take their status and extra
  headers from `answer()`;
- the OpenAPI document's error responses are `error_responses()`.

Some rows are answers BentoML gives itself (pydantic validation, its concurrency limit, its
timeout, its full batching queue); their types below only name them, for the middleware that
reshapes those answers and for the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pydantic
from bentoml.exceptions import BentoMLException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from convlens.feedback import FeedbackUnavailable, InvalidFeedback
from convlens.images import ImageError, ImageTooLarge, UnsupportedFormat
from convlens.preprocessing import NoDigitError
from convlens.receptive import OutsideLayer
from serving.loading import MissingInsight, ModelUnavailable


class UnknownLayer(ValueError):
    """A layer name that is not one of the model's (of the kind the endpoint shows)."""


class BodyTooLarge(Exception):
    """The request body is over `max_request_bytes`; refused before it is read."""


class TooManyRequests(Exception):
    """The worker's concurrency limit (`serving.traffic.Admission`, or BentoML's
    `traffic.max_concurrency` behind it) refused the request."""


class Overloaded(Exception):
    """BentoML's adaptive batching queue is full (its 503 says nothing more)."""


class TimedOut(Exception):
    """BentoML's `traffic.timeout` ran out before the answer started."""


OVERLOADED = "the service is overloaded: retry in a moment"


@dataclass(frozen=True)
class Answer:
    status: HTTPStatus
    description: str  # a clause of the OpenAPI response's description for `status`
    headers: tuple[tuple[bytes, bytes], ...] = ()


_400, _413 = HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE
_503 = HTTPStatus.SERVICE_UNAVAILABLE
# The most specific type of an exception decides (`answer`): ImageTooLarge over ImageError.
ERRORS: dict[type[BaseException], Answer] = {
    ImageError: Answer(_400, "bad input: not an image, empty, truncated or corrupt"),
    pydantic.ValidationError: Answer(
        _400,
        "a missing or malformed field; an array of the wrong shape or type, NaN or infinity, "
        "values out of range, more images than the batch limit",
    ),
    UnknownLayer: Answer(_400, "a layer the model does not have"),
    InvalidFeedback: Answer(_400, "feedback the store refuses (a label that is not a digit 0-9)"),
    OutsideLayer: Answer(_400, "a channel or position outside the layer's output"),
    MissingInsight: Answer(
        HTTPStatus.NOT_FOUND,
        "the served model was packaged without what this endpoint shows (an embedding map, "
        "top patches): the message says which",
    ),
    BodyTooLarge: Answer(_413, "over a limit: the request body (refused before it is read)"),
    ImageTooLarge: Answer(
        _413, "the image file size, or its pixels (read from the header before decoding)"
    ),
    UnsupportedFormat: Answer(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "unsupported format: an image or document that is not PNG, JPEG, BMP, GIF or WebP "
        "(TIFF, PDF, SVG, ...), or a pickle body (refused by BentoML)",
    ),
    NoDigitError: Answer(
        HTTPStatus.UNPROCESSABLE_ENTITY, "the image has no digit in it (blank, or no contrast)"
    ),
    TooManyRequests: Answer(
        HTTPStatus.TOO_MANY_REQUESTS,
        "too many requests in flight (with Retry-After)",
        ((b"retry-after", b"1"),),
    ),
    Exception: Answer(
        HTTPStatus.INTERNAL_SERVER_ERROR, "unexpected server error (a bug: see the server log)"
    ),
    ModelUnavailable: Answer(
        _503, "no usable model (the message says why; /readyz answers 503 too)"
    ),
    Overloaded: Answer(_503, "overloaded (with Retry-After)", ((b"retry-after", b"1"),)),
    FeedbackUnavailable: Answer(
        _503,
        "the feedback database is down, read-only or full (the message says which; nothing "
        "was stored, and nothing stored before is lost)",
        ((b"retry-after", b"30"),),
    ),
    TimedOut: Answer(HTTPStatus.GATEWAY_TIMEOUT, "not answered within the configured timeout"),
}


def answer(error: BaseException) -> Answer:
    """The row of the most specific type `error` is an instance of."""
    for kind in type(error).__mro__:
        if kind in ERRORS:
            return ERRORS[kind]
    return ERRORS[Exception]


class ClientError(BentoMLException):
    """A request the service cannot answer; BentoML replies with `error_code` (400 default)."""

    error_code = HTTPStatus.BAD_REQUEST


def client_error(error: Exception) -> ClientError:
    """`error` as the `ClientError` BentoML answers with the table's status."""
    return ClientError(str(error), error_code=answer(error).status)


# What `client_errors` converts: every row but the catch-all (a bug stays a logged 500).
_HANDLED = tuple(kind for kind in ERRORS if kind is not Exception)


@contextmanager
def client_errors() -> Iterator[None]:
    """Turn the library's input errors into `ClientError`s with their HTTP status."""
    try:
        yield
    except _HANDLED as error:
        raise client_error(error) from None


OWN_ANSWER = "x-convlens-answer"  # marks an error answer `JSONErrors` passes on as it is


def error_response(error: Exception) -> JSONResponse:
    """`error` as a finished answer, with its status, headers and message from `ERRORS`.

    For a 5xx an API sends itself (the feedback database is down): BentoML replaces the
    message of a 5xx `ClientError` with a generic one, and `JSONErrors` takes any other 503
    for BentoML's full queue; the `OWN_ANSWER` header tells it to pass this one on."""
    row = answer(error)
    headers = {key.decode(): value.decode() for key, value in row.headers}
    return JSONResponse(
        {"error": str(error)}, status_code=row.status, headers={**headers, OWN_ANSWER: "1"}
    )


def is_client_error(error: BaseException | None) -> bool:
    """Bad input, a 4xx BentoML error, or a client that went away mid-request."""
    if isinstance(error, pydantic.ValidationError | ClientDisconnect):
        return True
    return isinstance(error, BentoMLException) and error.error_code < 500


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


ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what was wrong"}},
    "additionalProperties": False,
}


def error_responses(reference: str = "#/components/schemas/Error") -> dict[str, Any]:
    """OpenAPI responses for every status in `ERRORS`, each described by its rows' clauses."""
    clauses: dict[int, list[str]] = {}
    for row in ERRORS.values():
        clauses.setdefault(int(row.status), []).append(row.description)
    return {
        str(status): {
            "description": _sentence("; ".join(parts)),
            "content": {"application/json": {"schema": {"$ref": reference}}},
        }
        for status, parts in sorted(clauses.items())
    }


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."
