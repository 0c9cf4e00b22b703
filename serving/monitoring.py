"""The model's own Prometheus series at `/metrics`, next to BentoML's request metrics.

What the served model answers (predictions per label and model version, how confident it
is, how often an upload has no digit), what users say about it (feedback agreement per model
version, from POST /feedback) and whether its inputs still look like its training data
(PSI of a few input statistics, `convlens.drift`).

BentoML runs several worker processes and serves `/metrics` through prometheus_client's
multiprocess mode: each worker writes its series to files in PROMETHEUS_MULTIPROC_DIR, and
whichever worker answers a scrape sums them. So counters and histograms here are service-
wide. Drift is per worker (a rolling window of its recent inputs): its gauges carry the
worker's `pid` label, and `max without (pid)` is the service's figure.

The series are created on first use, in the worker: prometheus_client picks multiprocess
mode from the environment when it is imported, and BentoML sets it up for its workers
(`bentoml.metrics`, deprecated in 1.4, only defers that import the same way).

    curl -s localhost:3000/metrics | grep ^convlens_
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.drift import Reference, Window
from convlens.preprocessing import NoDigitError
from serving.errors import ClientError, answer

REFERENCE_FILE = Path(__file__).with_name("drift_reference.json")
WINDOW = 500  # recent inputs per worker: PSI of MNIST test digits stays < 0.06 at this size
MIN_INPUTS = 200  # below this, sampling noise alone reads as "moderate": no figure yet
PSI_EVERY = 16  # inputs between two PSI updates: ~3% of the window, a cheap request path
MAX_VERSIONS = 16  # distinct model versions feedback is counted under, per worker
OTHER_VERSION = "other"
CONFIDENCE_BUCKETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
NO_DIGIT_STATUS = answer(NoDigitError()).status


class _Series:
    """This worker's series and drift window; made once per process (`_series`)."""

    def __init__(self) -> None:
        import prometheus_client as prom  # here: after BentoML set up multiprocess mode

        self.predictions = prom.Counter(
            "convlens_predictions",
            "Predictions served, per predicted label, model version and endpoint.",
            ["model_version", "label", "endpoint"],
            registry=None,
        )
        self.confidence = prom.Histogram(
            "convlens_prediction_confidence",
            "The top class probability of each prediction, per model version.",
            ["model_version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=None,
        )
        self.no_digit = prom.Counter(
            "convlens_no_digit_answers",
            "Uploads to /predict answered 422: no digit in the image (blank, no contrast).",
            registry=None,
        )
        self.feedback = prom.Counter(
            "convlens_feedback",
            "Feedback received, per model version; agreed=true when the user confirmed the "
            "prediction.",
            ["model_version", "agreed"],
            registry=None,
        )
        self.drift = prom.Gauge(
            "convlens_input_drift_psi",
            f"Population stability index of an input statistic over this worker's last "
            f"{WINDOW} inputs against MNIST training digits (<0.1 stable, 0.1-0.25 moderate, "
            f">0.25 drifted); set from {MIN_INPUTS} inputs on.",
            ["statistic"],
            multiprocess_mode="liveall",
            registry=None,
        )
        self.window_inputs = prom.Gauge(
            "convlens_input_drift_window_inputs",
            f"Inputs in this worker's drift window (at most {WINDOW}).",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.window = Window(Reference.load(REFERENCE_FILE), WINDOW)
        self.since_update = 0
        self.lock = threading.Lock()
        self.versions: set[str] = set()  # model versions feedback was counted under
        self._predicted: dict[tuple[str, int, str], Any] = {}
        self._confident: dict[str, Any] = {}

    def predicted(self, version: str, label: int, endpoint: str) -> Any:
        key = (version, label, endpoint)
        child = self._predicted.get(key)
        if child is None:
            child = self._predicted[key] = self.predictions.labels(version, str(label), endpoint)
        return child

    def confident(self, version: str) -> Any:
        child = self._confident.get(version)
        if child is None:
            child = self._confident[version] = self.confidence.labels(version)
        return child

    def update_drift(self) -> None:
        self.since_update = 0
        if self.window.filled >= MIN_INPUTS:
            for name, score in self.window.psi().items():
                self.drift.labels(name).set(score)


_state: _Series | None = None
_state_lock = threading.Lock()


def _series() -> _Series:
    global _state
    if _state is None:
        with _state_lock:
            if _state is None:
                _state = _Series()
    return _state


def start() -> None:
    """Create the series now (in the worker, before the first request), so that a scrape
    shows them, at zero, from the start."""
    _series()


def record_prediction(probabilities: torch.Tensor, model_version: str, endpoint: str) -> None:
    """Count the predictions of a (N, 10) probability batch and observe their confidence."""
    confidence, labels = probabilities.max(dim=1)
    series = _series()
    histogram = series.confident(model_version)
    if len(labels) == 1:
        series.predicted(model_version, int(labels[0]), endpoint).inc()
        histogram.observe(float(confidence[0]))
        return
    for label, count in enumerate(np.bincount(labels.numpy(), minlength=10).tolist()):
        if count:
            series.predicted(model_version, label, endpoint).inc(count)
    for value in confidence.tolist():
        histogram.observe(value)


def record_no_digit() -> None:
    """One /predict upload answered 422: no digit in it."""
    _series().no_digit.inc()


@contextmanager
def counting_no_digit() -> Iterator[None]:
    """Around the preprocessing of an upload: its 422 "no digit" answer is counted."""
    try:
        yield
    except ClientError as error:
        if error.error_code == NO_DIGIT_STATUS:
            record_no_digit()
        raise


def record_inputs(digits: np.ndarray) -> None:
    """Add 28x28 digits as the model sees them ((N, 28, 28) or (N, 1, 28, 28), uint8 or
    float 0-1) to this worker's drift window; the PSI gauges follow every PSI_EVERY inputs
    (PSI over the window is the costly part of a request's bookkeeping)."""
    series = _series()
    with series.lock:
        series.window.add(digits)
        series.since_update += len(digits)
        series.window_inputs.set(series.window.filled)
        if series.since_update >= PSI_EVERY:
            series.update_drift()


def record_feedback(model_version: str, agreed: bool) -> None:
    """One piece of feedback on a prediction of `model_version`: the user agreed or not.

    The version comes from the client: past MAX_VERSIONS distinct ones in a worker, the rest
    count as "other", so that made-up versions cannot grow /metrics without bound."""
    series = _series()
    with series.lock:
        if model_version not in series.versions:
            if len(series.versions) >= MAX_VERSIONS:
                model_version = OTHER_VERSION
            series.versions.add(model_version)
    series.feedback.labels(model_version, "true" if agreed else "false").inc()
