"""The layers every request passes through around the service's API, installed in one place
because their order is the design:

    Admission (serving.traffic)            outside all of BentoML: a refusal costs little
      BentoML's metrics, tracing, timeout    (its own middlewares)
        JSONErrors (serving.middleware)      body limit, readiness, the one error shape
          SpreadConnections                  busy workers hand connections back
            PredictShortcut (serving.shortcut)  /predict beside BentoML's request path
              BentoML's routing and the API methods

`serving.service` calls `install` once, after it defines the service class.
"""

from __future__ import annotations

from typing import Any

from serving import bentoml_private
from serving.inference import prediction_json
from serving.loading import MODEL_STATUS
from serving.middleware import JSONErrors, SpreadConnections
from serving.openapi import openapi_json
from serving.settings import CONFIG
from serving.shortcut import PredictShortcut
from serving.traffic import Admission, APIThreads, InFlight


def install(service: Any, api_threads: APIThreads) -> None:
    """Add the layers above to `service`, innermost last (BentoML adds its middlewares in
    order, outside in)."""
    routes = bentoml_private.api_routes(service)
    held = InFlight()  # this worker's, counted at the door
    service.add_asgi_middleware(
        JSONErrors,
        routes=routes,
        max_body_bytes=CONFIG.max_request_bytes,
        status=MODEL_STATUS,
        openapi=openapi_json(service, MODEL_STATUS),
    )
    service.add_asgi_middleware(SpreadConnections, every=CONFIG.requests_per_connection)
    service.add_asgi_middleware(
        PredictShortcut,
        route="/predict",
        field="image",
        answer=lambda data: prediction_json(MODEL_STATUS.model, data, CONFIG.image_limits),
        threads=api_threads,
        held=held,
        headers=[bentoml_private.server_header(service)],
    )
    bentoml_private.wrap_app(
        service, lambda app: Admission(app, routes, CONFIG.max_in_flight, held)
    )
