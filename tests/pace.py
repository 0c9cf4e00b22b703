"""A training that takes its time, for tests that hold a training open while something else
happens (the tracking server going away): it keeps logging as a long training does, without
spending a core the other tests of the run need."""

from __future__ import annotations

import time

from pytorch_lightning import Callback


class Pace(Callback):
    """Sleep `seconds` after every training batch."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
