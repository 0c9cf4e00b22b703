"""The floor under a refusal's latency on this machine: a server that refuses every API request
with the service's own 429, while each worker's API thread classifies digits without pause.

    CONVLENS_PEER_MODEL_DIR=<bentoml home>/models/convlens-mnist/<version> \
        uvicorn benchmarks.peers.refusal_floor_app:app --host 127.0.0.1 --workers 2

At twice its capacity the service's API threads never stop computing, and its event loops
refuse half of what arrives. Here the refusals are the service's door itself
(`serving.traffic.Admission`, with no room) and the computing is the champion on an MNIST
digit, the FastAPI peer's way (`benchmarks.peers.champion`), for as long as requests keep
arriving (so that, idle, it costs the servers measured beside it nothing); nothing else runs
in the worker. `benchmarks.peers` drives it in turn with the service at the same rate
(`compare.open_overload`).

The model, the digit and the computing thread come with uvicorn's lifespan (on by default),
before the worker answers: a worker that cannot load them fails its startup and exits, rather
than refuse on idle cores and report a floor that is not one.
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
IDLE_POLL_S = 0.005  # how soon an idle thread notices arrivals: well under the 0.1 s

last_request = -BUSY_AFTER_A_REQUEST_S  # monotonic


def compute(net: Any, image: bytes) -> None:
    """An API thread that is never idle while requests arrive."""
    while True:
        if time.monotonic() - last_request < BUSY_AFTER_A_REQUEST_S:
            predict_image(net, image)
        else:
            time.sleep(IDLE_POLL_S)


async def ready(scope: dict, receive: Any, send: Any) -> None:
    """Whatever the door lets through: the lifespan (which starts the computing) and
    `/readyz`."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] != "lifespan.startup":
                continue
            try:
                work = (load_champion(), digit_png())
            except Exception as error:  # whichever it is, there is nothing to measure
                failed = f"refusal floor: no model to compute with: {error!r}"
                await send({"type": "lifespan.startup.failed", "message": failed})
                return
            threading.Thread(target=compute, args=work, name="convlens-api", daemon=True).start()
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


door = Admission(ready, routes=API_ROUTES, limit=0)


async def app(scope: dict, receive: Any, send: Any) -> None:
    global last_request
    if scope["type"] == "http":
        last_request = time.monotonic()
    await door(scope, receive, send)
