"""The web page as a small ASGI app, mounted by the BentoML service at `/ui`.

It only serves the static files in `serving/ui/` (HTML, JS, CSS and sample digits); the page
talks to the model through the service's public endpoints, like any other client.

    from serving.ui_app import ui_app

    @bentoml.asgi_app(ui_app, path="/ui")
    @bentoml.service
    class ConvLens: ...
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent / "ui"


class _Assets(StaticFiles):
    """Static files that a browser revalidates, so an updated page is never stale."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


ui_app = Starlette(
    routes=[
        Mount("/", _Assets(directory=UI_DIR, html=True), name="ui"),
    ]
)
