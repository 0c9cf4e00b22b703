"""The floor under a refusal's latency on this machine: a server that refuses every API request
with the service's own 429, while each worker's API thread classifies digits without pause.

    CONVLENS_PEER_MODEL_DIR=<bentoml home>/models/convlens-mnist/<version> \
        uvicorn benchmarks.peers.refusal_floor_app:app --host 127.0.0.1 --workers 2

At twice its capacity the service's API threads never stop computing, and its event loops
refuse half of what arrives. Here the refusals are the service's door itself
(`serving.traffic.Admission`, with no room) and the computing is the champion on an MNIST
digit, the FastAPI peer's way (`benchmarks.peers.champion`), for as long as requests keep
arriving (so that, idle, it costs the servers measured beside it nothing); nothing else runs
in the worker.
Driven at the same rate as the service (`benchmarks.peers`, overload), the refusal p99 it
measures is what busy cores alone cost: the event loop waiting for a CPU and for the GIL, and
the load generator, which shares the machine, waiting for a CPU before it sends. The service's
refusal p99 over this one is what its own path adds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.peers.champion import load_champion, predict_image
from serving.traffic import Admission
from tests.harness import digit_png

API_ROUTES = ("/predict", "/predict_batch")
BUSY_AFTER_A_REQUEST_S = 0.1


class Arrivals:
    last = -BUSY_AFTER_A_REQUEST_S  # monotonic time of the last request


def compute() -> None:
    """An API thread that is never idle while requests arrive."""
    net, image = load_champion(), digit_png()
    while True:
        if time.monotonic() - Arrivals.last < BUSY_AFTER_A_REQUEST_S:
            predict_image(net, image)
        else:
            time.sleep(0.005)


async def ready(scope: dict, receive: Any, send: Any) -> None:
    """Whatever the door lets through: the lifespan (which starts the computing) and
    `/readyz`."""
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        threading.Thread(target=compute, name="convlens-api", daemon=True).start()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


door = Admission(ready, routes=API_ROUTES, limit=0)


async def app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        Arrivals.last = time.monotonic()
    await door(scope, receive, send)
