"""POST /predict answered beside BentoML's request path, for the uploads it can answer.

py-spy on a worker under /predict load (BENCHMARKS.md, goal 2) found a third of the event
loop's time in BentoML's path around the API method: the form parsed into its input model,
the upload written to a temporary file and read back, the request context, the routing, the
output model and its response. `PredictShortcut`, the innermost of the service's middlewares,
answers a well-formed upload itself: the body read in memory, the image decoded, the digit
classified (on the API thread, or on the event loop as below), the same JSON sent.
Everything outside it still applies: the concurrency limit, BentoML's metrics and timeout,
the body limit and the readiness check.

It takes bodies of up to `max_body_bytes` (1 MiB: a digit's PNG is a few KB), whose length
is declared, so that what it holds in memory per request stays small; larger or chunked
bodies go to BentoML unread, which streams them to disk as before.

Where it classifies: on the API thread, like every API, unless the request is the worker's
only one and the upload is small: at most `inline_bytes` (a digit's PNG is 0.2-8 KB), and at
most `inline_pixels` by its header. Then the event loop classifies it itself: nothing else
waits for the loop, and the hand-off to the thread and back costs more than it frees (one
worker, one client: up to a fifth more requests a second; BENCHMARKS.md). With two requests
or more in the worker, every one takes the API thread, so refusals and health checks are
answered while it computes. The two sizes bound what the loop decodes: a 4096x4096 PNG takes
0.16-0.38 s, and a small file can still hold many compressed chunks or JPEG scans.

It answers successes only. Anything else (another field, a form it cannot parse, an upload
that is not a digit, a bug) goes on to BentoML's path with the body as it came, where the
validation, the counting of refused digits, the log line and the error answer stay in their
one home; such a request is read twice, which costs little next to what is wrong with it.
A failure that is not the client's is logged as a warning, so that a bug here shows.

Its answers carry the headers BentoML's would (JSON, its Server header) but not CORS headers:
the service does not turn BentoML's CORS on (`http.cors` in BentoML's configuration).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from convlens.images import header_pixels
from serving import errors
from serving.middleware import send_json
from serving.traffic import APIThreads, InFlight

logger = logging.getLogger("convlens.serving")


class PredictShortcut:
    """ASGI middleware: `POST route` with a multipart form of one file field, `field`,
    answered 200 with `answer(the file's bytes)`, computed on `threads` or, for a small image
    while `held` counts no other request, on the event loop."""

    max_body_bytes = 1 << 20
    inline_bytes = 16 * 1024
    inline_pixels = 512 * 512  # decoded and classified in about 2 ms (a 280x280 drawing: 0.7)

    def __init__(
        self,
        app: Any,
        route: str,
        field: str,
        answer: Callable[[bytes], bytes],
        threads: APIThreads,
        held: InFlight,
        headers: list[tuple[bytes, bytes]],
    ):
        self.app = app
        self.route = route
        self.field = field
        self.answer = answer
        self.threads = threads
        self.held = held
        self.headers = headers

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not self._may_answer(scope):
            await self.app(scope, receive, send)
            return
        messages = [await receive()]
        while messages[-1]["type"] == "http.request" and messages[-1].get("more_body", False):
            messages.append(await receive())
        body = await self._answer(scope, messages)
        if body is None:
            await self.app(scope, _replay(messages, receive), send)
        else:
            await send_json(send, 200, body, self.headers)

    def _may_answer(self, scope: dict) -> bool:
        if scope["type"] != "http" or scope["path"] != self.route or scope["method"] != "POST":
            return False
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            return False
        length = headers.get(b"content-length", b"")
        small = length.isdigit() and int(length) <= self.max_body_bytes
        return small and not scope["query_string"]

    async def _answer(self, scope: dict, messages: list[dict]) -> bytes | None:
        """The answer's body, or None for BentoML's path to answer."""
        if messages[-1]["type"] != "http.request":
            return None  # the client went away, or the body limit cut it short
        request = Request(scope, _replay(messages, None))
        try:
            form = await request.form()
        except Exception:
            return None
        try:
            items = form.multi_items()
            if len(items) != 1 or items[0][0] != self.field:
                return None
            upload = items[0][1]
            if not isinstance(upload, UploadFile):
                return None
            data = await upload.read()
            if self._on_the_loop(data):
                return self.answer(data)
            return await self.threads.submit(lambda: self.answer(data))
        except Exception as error:
            if errors.answer(error).status >= 500:  # a bug, which the fallback would hide
                logger.warning("/predict's shortcut failed; BentoML's path answers", exc_info=True)
            return None
        finally:
            await form.close()

    def _on_the_loop(self, data: bytes) -> bool:
        if self.held.count != 1 or len(data) > self.inline_bytes:  # 0: nothing counts here
            return False
        pixels = header_pixels(data)
        return pixels is not None and pixels <= self.inline_pixels


def _replay(messages: list[dict], receive: Any) -> Callable[[], Any]:
    """A `receive` that gives `messages` again, then waits on `receive` (a disconnect)."""
    pending = list(messages)

    async def replayed() -> dict:
        if pending:
            return pending.pop(0)
        if receive is None:
            return {"type": "http.disconnect"}
        return await receive()

    return replayed
