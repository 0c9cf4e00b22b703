"""The service's ASGI middlewares: what happens before BentoML reads a request, and after.

`JSONErrors` gives every error answer the one shape {"error": "..."} (BentoML's own
included), refuses oversized bodies and requests without a usable model before they are
read, and serves the corrected OpenAPI document. `SpreadConnections` closes some keep-alive
connections of a busy worker so that clients spread over the workers. Statuses and extra
headers of the answers come from `serving.errors.ERRORS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from http import HTTPStatus
from typing import Any

from serving.errors import (
    OVERLOADED,
    OWN_ANSWER,
    BodyTooLarge,
    Overloaded,
    TimedOut,
    TooManyRequests,
    answer,
    error_message,
)
from serving.loading import ModelStatus, ModelUnavailable

Headers = list[tuple[bytes, bytes]]
# BentoML's own error answers that have a row of their own in `serving.errors.ERRORS`.
BENTOML_ANSWERS: dict[int, type[Exception]] = {
    HTTPStatus.TOO_MANY_REQUESTS: TooManyRequests,
    HTTPStatus.SERVICE_UNAVAILABLE: Overloaded,
    HTTPStatus.GATEWAY_TIMEOUT: TimedOut,
}


class JSONErrors:
    """ASGI middleware, inside the concurrency limit (`serving.traffic.Admission`) and
    BentoML's middleware: the service's answers before and around BentoML's.

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
            await send_json(send, HTTPStatus.OK, self.openapi())
            return
        if path == "/readyz" and self.status.problem is not None:
            await send_error(send, ModelUnavailable(self.status.error))
            return
        if path not in self.routes:
            await self.app(scope, receive, send)
            return
        if self.status.problem is not None:
            await send_error(send, ModelUnavailable(self.status.error))
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await send_error(send, BodyTooLarge(self._too_large(length)))
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
            elif message["type"] == "http.response.start" and _own_answer(message):
                await send(message)  # already in the one shape (`error_response`)
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
        """BentoML's error answer, in the one shape, its status and headers kept."""
        status = state["start"]["status"]
        headers = [
            (key, value)
            for key, value in state["start"].get("headers", [])
            if key.lower() not in (b"content-length", b"content-type")
        ]
        if state["too_large"]:
            await send_error(send, BodyTooLarge(self._too_large(None)), headers)
            return
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            # BentoML's 503s (adaptive batching's queue is full) say nothing specific.
            if self.status.problem:
                await send_error(send, ModelUnavailable(self.status.error), headers)
            else:
                await send_error(send, Overloaded(OVERLOADED), headers)
            return
        body = b"".join(state["chunks"])
        try:
            message = error_message(json.loads(body))
        except ValueError:
            message = body.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase
        if status in BENTOML_ANSWERS:
            await send_error(send, BENTOML_ANSWERS[status](message), headers)
        else:  # validation (400), pickle (415), a bug (500): BentoML's status stands
            await send_message(send, status, message, headers)

    def _too_large(self, length: int | None) -> str:
        size = f"{length:,} bytes" if length is not None else "too large"
        return f"the request body is {size}; the limit is {self.max_body_bytes:,} bytes"


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


def _own_answer(start: dict) -> bool:
    """An error answer the service made itself (`serving.errors.error_response`), its marker
    header removed: sent as it is."""
    marker = OWN_ANSWER.encode()
    headers = start.get("headers", [])
    kept = [(key, value) for key, value in headers if key.lower() != marker]
    start["headers"] = kept
    return len(kept) < len(headers)


def _content_length(scope: dict) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def send_json(send: Any, status: int, body: bytes, headers: Headers | None = None) -> None:
    """A whole JSON answer: start and body."""
    headers = [
        *(headers or []),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": int(status), "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_message(
    send: Any, status: int, message: str, headers: Headers | None = None
) -> None:
    """The one error shape, {"error": message}."""
    await send_json(send, status, json.dumps({"error": message}).encode(), headers)


async def send_error(send: Any, error: BaseException, headers: Headers | None = None) -> None:
    """`error` answered with its status and extra headers from `serving.errors.ERRORS`."""
    row = answer(error)
    await send_message(send, row.status, str(error), [*(headers or []), *row.headers])
