"""A Lightning callback that timestamps the phases of a real `make train` run.

Added from the command line only, so the shipped configs stay untouched:

    make train ARGS="+callbacks.bench_timer._target_=benchmarks.callbacks.PhaseTimer \
                     +callbacks.bench_timer.path=/tmp/phases.json"

It costs two attribute checks per training step. Times are `time.time()` (seconds since the
epoch), so they line up with the process start time read from /proc.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

from pytorch_lightning import Callback


def process_start_time() -> float:
    """When this process started, in seconds since the epoch (its age from /proc, 10 ms)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - start_ticks / ticks)


class PhaseTimer(Callback):
    def __init__(self, path: str):
        self.path = path
        self.t: dict[str, float] = {"process_start": process_start_time()}
        self.epochs: list[dict[str, float]] = []
        self.train_images = 0
        self._first_step = True

    def _mark(self, name: str) -> None:
        self.t.setdefault(name, time.time())

    def setup(self, trainer, pl_module, stage):
        self._mark(f"setup_{stage}")

    def on_fit_start(self, trainer, pl_module):
        self._mark("fit_start")

    def on_train_start(self, trainer, pl_module):
        self._mark("train_start")

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append({"start": time.time()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._first_step:
            self._mark("first_step_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_images += len(batch[1])
        if self.epochs:
            self.epochs[-1]["last_step_end"] = time.time()
        if self._first_step:
            self._first_step = False
            self._mark("first_step_end")

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and self.epochs:
            self.epochs[-1]["val_start"] = time.time()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and self.epochs and batch_idx == 0:
            self.epochs[-1]["val_batches_start"] = time.time()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if not trainer.sanity_checking and self.epochs:
            self.epochs[-1]["val_batches_end"] = time.time()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and self.epochs:
            self.epochs[-1]["val_end"] = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs[-1]["end"] = time.time()

    def on_fit_end(self, trainer, pl_module):
        self._mark("fit_end")
        self._write()

    def on_test_end(self, trainer, pl_module):
        self._mark("test_end")
        self._write()

    def _write(self) -> None:
        payload = {
            "t": self.t,
            "epochs": self.epochs,
            "train_images": self.train_images,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        Path(self.path).write_text(json.dumps(payload, indent=2))
