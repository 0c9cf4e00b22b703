"""Every use of BentoML's private or undocumented APIs, in one place (BentoML 1.4.40).

Each works around a BentoML behaviour named in its docstring; none is applied by importing
this module. `serving.service` calls `apply()` once, before it defines the service. After a
BentoML upgrade, this is the module to check: the names below may move or change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from serving.errors import ClientError, is_client_error

# The logger of `bentoml._internal.server.http_app.log_exception`, which BentoML's API
# endpoint calls for every exception an API raises.
HTTP_APP_LOGGER = "bentoml._internal.server.http_app"


def cpu_count() -> int:
    """The CPUs BentoML would start `cpu_count` workers for (container limits respected).

    BentoML's `workers="cpu_count"` reads its private resource registry; the service needs the
    same number to size its concurrency limit (`ServingConfig.max_concurrency`), and BentoML
    offers no public way to ask for it.
    """
    from bentoml._internal.resource import system_resources

    return max(1, int(system_resources()["cpu"]))


def openapi_spec(service: Any) -> dict[str, Any]:
    """The OpenAPI document BentoML serves for `service`, as plain data.

    `Service.openapi_spec` is how BentoML builds `/docs.json`; it is undocumented, and the
    document it gives describes errors the service never sends (`serving.openapi` corrects it).
    """
    return service.openapi_spec.asdict()


def wrap_app(service: Any, wrapper: Callable[[Any], Any]) -> None:
    """Have BentoML serve `wrapper(app)` for `service`, where `app` is the ASGI app it builds.

    `Service.add_asgi_middleware` puts a middleware inside BentoML's own (metrics,
    OpenTelemetry, timeout, concurrency limit), which every request then pays for first; the
    worker builds its app with `Service.to_asgi` (undocumented), so that is where to reach
    the outside of it. Other services in the process are served as they were.
    """
    kind = type(service)
    build = kind.to_asgi

    def to_asgi(self: Any, *args: Any, **kwargs: Any) -> Any:
        app = build(self, *args, **kwargs)
        return wrapper(app) if self is service else app

    kind.to_asgi = to_asgi


def api_routes(service: Any) -> list[str]:
    """The HTTP path of every API of `service` (`Service.apis`, undocumented)."""
    return [method.route for method in service.apis.values()]


def server_header(service: Any) -> tuple[bytes, bytes]:
    """The Server header BentoML puts on every API answer (`ServiceAppFactory.
    _add_response_headers`), for an answer `serving.shortcut` makes in its place."""
    return b"server", f"BentoML Service/{service.name}".encode()


def answer_media_types(service: Any) -> None:
    """Say once what media type each API of `service` answers with.

    For an answer annotated as a root type (`list[Prediction]`, `dict[str, Any]`), BentoML's
    `IOMixin.mime_type` finds out that it is JSON on every answer, by building a pydantic
    `TypeAdapter` and its JSON schema: 0.24 ms of the event loop per `/predict_batch` answer, 5%
    of its time there. Setting `media_type` to the value it computes ends that. No answer and
    no OpenAPI document changes; `/schema.json` now names each output's media type, which
    BentoML's clients do not read.
    """
    for method in service.apis.values():
        spec = method.output_spec
        if spec.media_type is None:
            spec.media_type = spec.mime_type()


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


class UploadsOnly(MultipartSerde):
    """BentoML's form parsing (`_bentoml_impl.serde.MultipartSerde`), minus three ways a
    malformed form became a 500.

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


def apply() -> None:
    """Install the workarounds in this process: `UploadsOnly` wherever BentoML would parse a
    form with `MultipartSerde` (its serde table, `ALL_SERDE`, read per request), and
    `QuietClientErrors` on BentoML's API exception logger. Calling it again changes nothing."""
    for media_type, serde in list(ALL_SERDE.items()):
        if serde is MultipartSerde:
            ALL_SERDE[media_type] = UploadsOnly  # type: ignore[index]
    logger = logging.getLogger(HTTP_APP_LOGGER)
    if not any(isinstance(existing, QuietClientErrors) for existing in logger.filters):
        logger.addFilter(QuietClientErrors())
