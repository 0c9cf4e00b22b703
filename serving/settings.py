"""The service's settings: `serving/config.yaml`, with two environment overrides.

One frozen `ServingConfig`, read once at import (`CONFIG`), because BentoML needs the worker
count, threads and traffic limits when the `@bentoml.service` class is defined, before any
instance exists. CONVLENS_MODEL and CONVLENS_WORKERS override `model` and `workers`, so a
deployment picks the model and the size without editing the file baked into the Bento.
CONVLENS_FEEDBACK_URL names the database POST /feedback stores in (`feedback_url_from`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from convlens.artifact import MODEL_ENV
from convlens.feedback import FEEDBACK_URL_ENV, default_url
from convlens.images import ImageLimits
from serving.bentoml_private import cpu_count

CONFIG_FILE = Path(__file__).with_name("config.yaml")


@dataclass(frozen=True)
class ServingConfig:
    model: str
    workers: int
    threads: int
    torch_threads: int
    timeout_s: float
    max_in_flight_per_thread: int
    requests_per_connection: int
    access_log: bool
    metrics: bool
    max_batch_size: int
    max_latency_ms: int
    max_request_bytes: int
    max_batch_images: int
    image_limits: ImageLimits
    feedback_url: str = ""  # where POST /feedback stores: `feedback_url_from`
    tracing: bool = True

    @property
    def tracing_options(self) -> dict[str, Any]:
        """BentoML's tracing config: with tracing off, OpenTelemetry's ASGI middleware skips
        every URL (`excluded_urls`) instead of making a span, and two for its receive and
        send, for each request that no exporter would ever see."""
        return {} if self.tracing else {"excluded_urls": ".*"}

    @property
    def max_concurrency(self) -> int:
        """Requests in flight (running or waiting) in the whole service: BentoML's
        `traffic.max_concurrency`. Each worker holds its share (`max_in_flight`), and
        `serving.traffic.Admission` answers 429 beyond it before BentoML's limit would."""
        return self.workers * self.threads * self.max_in_flight_per_thread

    @property
    def max_in_flight(self) -> int:
        """One worker's share of `max_concurrency`: what `serving.admission` admits."""
        return self.threads * self.max_in_flight_per_thread

    @classmethod
    def load(cls, path: Path = CONFIG_FILE, env: Mapping[str, str] | None = None) -> ServingConfig:
        """`config.yaml`, with CONVLENS_MODEL and CONVLENS_WORKERS from the environment on top."""
        env = os.environ if env is None else env
        raw = yaml.safe_load(path.read_text())
        workers = env.get("CONVLENS_WORKERS") or raw["workers"]
        limits = raw["limits"]
        return cls(
            model=env.get(MODEL_ENV) or raw["model"],
            workers=cpu_count() if workers == "cpu_count" else int(workers),
            threads=int(raw["threads"]),
            torch_threads=int(raw["torch_threads"]),
            timeout_s=float(raw["timeout_s"]),
            max_in_flight_per_thread=int(raw["max_in_flight_per_thread"]),
            requests_per_connection=int(raw["requests_per_connection"]),
            access_log=bool(raw["access_log"]),
            metrics=bool(raw["metrics"]),
            max_batch_size=int(raw["batching"]["max_batch_size"]),
            max_latency_ms=int(raw["batching"]["max_latency_ms"]),
            max_request_bytes=int(limits["max_request_bytes"]),
            max_batch_images=int(limits["max_batch_images"]),
            image_limits=ImageLimits(
                max_bytes=int(limits["max_image_bytes"]),
                max_pixels=int(limits["max_image_pixels"]),
            ),
            feedback_url=feedback_url_from(env),
            tracing=bool(raw.get("tracing", True)),
        )


def feedback_url_from(env: Mapping[str, str]) -> str:
    """CONVLENS_FEEDBACK_URL, else the SQLite file in the BentoML home: the one folder a
    service is sure to be able to write, wherever it runs (a Bento container too)."""
    home = env.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")
    return env.get(FEEDBACK_URL_ENV) or default_url(home)


CONFIG = ServingConfig.load()
