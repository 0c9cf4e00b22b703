"""Training that keeps going when the MLflow tracking server does not answer, and loses nothing.

MLflow's client retries a failed request for minutes, so a server outage stalls the training
loop for as long as it lasts. Here writes get short timeouts; what fails waits in an outbox (in
memory, and on disk once the server is known to be away) and is retried after growing pauses.
A two-minute outage costs a few seconds of training; a permanent one leaves a folder that
`python -m pipelines.upload` sends once the server is back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric
from PIL import Image
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
PAUSES_S = (5, 10, 20, 40, 60)
MANIFEST = "manifest.json"
DELIVERY_THREADS = 8


class Outbox:
    """Metrics and images not yet written to a run, mirrored to `folder` while they wait."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.metrics: list[Metric] = []
        self.images: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.metrics) + len(self.images)

    def add_image(self, image: Image.Image, key: str, step: int) -> None:
        path = self.folder / "images" / f"{len(self.images):05d}-{key.replace('/', '~')}-{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        timestamp = int(time.time() * 1000)
        self.images.append({"path": str(path), "key": key, "step": step, "timestamp": timestamp})

    def deliver(self, client: MlflowClient, run_id: str) -> None:
        """Write what waits, oldest first; on a failure, raise and keep what was not written.

        Images go `DELIVERY_THREADS` at a time: each is three requests (the PNG, its preview,
        a tag), so after a long outage one at a time kept training waiting for minutes. The
        first goes alone: it creates the run's "has images" tag, which concurrent first
        writers would each try to insert.
        """
        while self.metrics:
            chunk = self.metrics[:1000]
            client.log_batch(run_id, metrics=chunk)
            del self.metrics[: len(chunk)]
        with ThreadPoolExecutor(DELIVERY_THREADS) as pool:
            size = 1
            while self.images:
                batch, size = self.images[:size], DELIVERY_THREADS
                errors = list(pool.map(lambda item: _write_image(client, run_id, item), batch))
                unwritten = [item for item, error in zip(batch, errors, strict=True) if error]
                self.images[: len(batch)] = unwritten
                if unwritten:
                    raise next(error for error in errors if error)
        self.persist()

    def persist(self, **manifest: Any) -> None:
        """Mirror what waits to disk (or clear the folder's lists when nothing does)."""
        if not len(self) and not manifest and not self.folder.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        metrics = [
            {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
            for m in self.metrics
        ]
        (self.folder / "metrics.json").write_text(json.dumps(metrics))
        (self.folder / "images.json").write_text(json.dumps(self.images))
        if manifest:
            (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, folder: Path) -> Outbox:
        box = cls(folder)
        box.metrics = [Metric(**m) for m in json.loads((box.folder / "metrics.json").read_text())]
        box.images = json.loads((box.folder / "images.json").read_text())
        return box


def _write_image(client: MlflowClient, run_id: str, item: dict[str, Any]) -> Exception | None:
    """Log one waiting image and remove its file; the error instead of raising it."""
    try:
        with Image.open(item["path"]) as image:
            client.log_image(
                run_id, image, key=item["key"], step=item["step"], timestamp=item["timestamp"]
            )
    except Exception as error:
        return error
    Path(item["path"]).unlink(missing_ok=True)
    return None


class BufferedMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger, plus images, with writes that survive a tracking outage."""

    def __init__(self, *args: Any, outbox_dir: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if str(self._tracking_uri).startswith(("http://", "https://")):
            for name, value in HTTP_SETTINGS.items():
                os.environ.setdefault(name, value)
        self.outbox = Outbox(Path(outbox_dir))
        self.failures = 0
        self._next_try = 0.0

    @property
    def unreachable(self) -> bool:
        return bool(self.outbox)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        # Lightning logs these again when testing starts; the first write happened at start,
        # when the server was known to answer, and the whole config is logged beside them.
        if self.outbox:
            return
        try:
            super().log_hyperparams(params)
        except Exception as error:
            self.record_failure(error)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        self.outbox.metrics += [
            Metric(key=key, value=float(value), timestamp=timestamp, step=step or 0)
            for key, value in metrics.items()
            if not isinstance(value, str)
        ]
        self.deliver()

    @rank_zero_only
    def log_image(self, image: Image.Image, key: str, step: int) -> None:
        if not self.outbox:
            try:
                self.experiment.log_image(self.run_id, image, key=key, step=step)
                return
            except Exception as error:
                self.record_failure(error)
        self.outbox.add_image(image, key, step)
        self.deliver()

    def deliver(self, force: bool = False) -> bool:
        """Try to empty the outbox unless the last failure was too recent; True when empty."""
        if not self.outbox:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        waiting = len(self.outbox)
        try:
            self.outbox.deliver(self.experiment, self.run_id)
        except Exception as error:
            self.record_failure(error)
            self.outbox.persist()
            return False
        if self.failures:
            log.warning("MLflow is reachable again: wrote %d buffered values", waiting)
            self.failures = 0
        return True

    def record_failure(self, error: Exception) -> None:
        self.failures += 1
        pause = PAUSES_S[min(self.failures, len(PAUSES_S)) - 1]
        self._next_try = time.monotonic() + pause
        if self.failures == 1:
            log.warning(
                "MLflow at %s did not take a write (%s): training goes on, buffering in %s",
                self._tracking_uri,
                type(error).__name__,
                self.outbox.folder,
            )

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized or not self.deliver(force=True):
            return
        try:
            super().finalize(status)
        except Exception as error:
            self.record_failure(error)
