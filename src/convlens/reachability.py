"""Is the tracking server there? Asked before anything heavy is imported, to fail in seconds."""

from __future__ import annotations

import time

import requests

from convlens import UserError


class TrackingError(UserError):
    """The tracking server cannot be reached."""


def check_reachable(tracking_uri: str, within_s: float = 10.0) -> None:
    """Fail fast, with a one-line reason, when an HTTP tracking server does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    deadline = time.monotonic() + within_s
    reason = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=3)
            if answer.status_code == 200:
                return
            reason = f"/health answered HTTP {answer.status_code}"
        except requests.RequestException as error:
            reason = type(error).__name__
        time.sleep(2)
    raise TrackingError(
        f"the MLflow tracking server at {tracking_uri} is unreachable ({reason}): start it, "
        "or unset MLFLOW_TRACKING_URI to use the local sqlite store"
    )
