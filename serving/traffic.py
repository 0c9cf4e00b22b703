"""How requests flow through a worker: one count at the door, one queue to the API thread.

At twice the capacity, BentoML's own path collapsed to about 30 answers a second (BENCHMARKS.md,
overload), for two reasons this module removes:

- BentoML's concurrency limit (`traffic.max_concurrency`) sits inside its metrics,
  OpenTelemetry and timeout middlewares: each refused request cost the worker's event loop
  two tasks, a timer, Prometheus writes and a JSONResponse, about 0.5 ms. `Admission` counts
  the same requests to the same per-worker limit outside all of that and refuses with one
  prebuilt answer. BentoML's limit stays configured (it is part of the service's documented
  traffic settings); it never fires for an API request, and as before it may refuse the web
  page's files while a worker is full.
- A sync API runs through `anyio.to_thread` behind a limiter of `threads` tokens: the API
  thread is handed its next request only after the event loop has resumed the last one's
  task, released the token and woken the next waiter, two or three loop passes that the
  refused clients' retries make long. `off_loop` puts the work on an executor's queue
  instead, from which the API thread takes the next request as soon as it is free.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from serving.errors import TooManyRequests, answer

REFUSED = "too many requests in flight: retry in a moment"

P = ParamSpec("P")
R = TypeVar("R")


class InFlight:
    """The API requests a worker holds, running or waiting: counted by `Admission` at the
    door, read by `serving.shortcut` to tell when a request is the worker's only one."""

    def __init__(self) -> None:
        self.count = 0


class Admission:
    """ASGI wrapper around the whole app: at most `limit` API requests in flight in this
    worker; more are answered 429 in the one error shape at once, their bodies unread."""

    def __init__(self, app: Any, routes: Collection[str], limit: int, held: InFlight | None = None):
        self.app = app
        self.routes = frozenset(routes)
        self.limit = limit
        self.held = held if held is not None else InFlight()
        row = answer(TooManyRequests())
        body = json.dumps({"error": REFUSED}).encode()
        headers = [
            *row.headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        self._start = {"type": "http.response.start", "status": int(row.status), "headers": headers}
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        if self.held.count >= self.limit:
            await send(self._start)
            await send(self._body)
            return
        self.held.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.held.count -= 1

    @property
    def in_flight(self) -> int:
        return self.held.count


class APIThreads:
    """The worker's API threads: one executor, made on first use in the worker process."""

    def __init__(self, threads: int):
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, call: Callable[[], R]) -> Awaitable[R]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="convlens-api")
        context = contextvars.copy_context()
        return asyncio.get_running_loop().run_in_executor(self._executor, context.run, call)

    def off_loop(self, method: Callable[P, R]) -> Callable[P, Awaitable[R]]:
        """`method` as a coroutine that runs it on these threads; BentoML reads the same
        signature and awaits it instead of using its own threads."""

        @functools.wraps(method)
        async def queued(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.submit(functools.partial(method, *args, **kwargs))

        # BentoML asks for the signature on every request; computed once, it is a lookup.
        queued.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
        return queued
