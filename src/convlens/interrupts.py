"""Ctrl-C always stops training, even when Python swallows its KeyboardInterrupt.

Python raises the KeyboardInterrupt of a SIGINT wherever the main thread happens to be. Inside
a finalizer (a `__del__`, or one of SQLAlchemy's weakref callbacks run by the garbage
collector) the exception is only printed, as "Exception ignored in ...", and training goes on
as if nothing had been pressed: a sweep's Ctrl-C test caught it hanging (CI at 6dd4782).

`install` makes SIGINT raise as Python does and also remembers it, for the life of the
process; `raise_pending` raises a remembered one again. Training calls it after every batch
(`NoLostInterrupt`), where Lightning's own interrupt handling takes over, and a sweep before
each trial. The swallowed one is not printed either: the user pressed Ctrl-C, and a
traceback would say something had gone wrong.

While a trainer runs, a first Ctrl-C is only remembered (`deferring`), and raised at the end
of the batch: raised where it landed, it could cut a database call short, as a sweep's
Ctrl-C test caught when it arrived in the middle of an Optuna write, whose connection then
kept SQLite's lock and the interrupted sweep waited on it for minutes. A batch is milliseconds
to a second; a second Ctrl-C raises at once, whatever is running. DataLoader workers ignore
Ctrl-C (`ignore_in_worker`): one that died of it would fail the main process's next fetch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any

from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning import Callback

_pending = threading.Event()
_deferring = threading.Event()


STOPPING = b"\nCtrl-C: stopping at the end of this batch (Ctrl-C again to stop at once)\n"


def _interrupt(signum: int, frame: Any) -> None:
    if _deferring.is_set() and not _pending.is_set():
        _pending.set()
        with contextlib.suppress(OSError):
            os.write(2, STOPPING)  # the terminal's stderr, whatever sys.stderr is now
        return
    _pending.set()
    raise KeyboardInterrupt


class _QuietInterrupts:
    """`sys.unraisablehook`: a remembered Ctrl-C is raised again later, not printed now."""

    def __init__(self, previous: Any):
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if not (_pending.is_set() and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            self.previous(unraisable)


def install() -> None:
    """SIGINT remembered in this process from now on (from the main thread; again is a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not _interrupt:
        signal.signal(signal.SIGINT, _interrupt)
    if not isinstance(sys.unraisablehook, _QuietInterrupts):
        sys.unraisablehook = _QuietInterrupts(sys.unraisablehook)


def raise_pending() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that was swallowed; nothing if there was none."""
    if _pending.is_set():
        _pending.clear()
        raise KeyboardInterrupt


def ignore_in_worker(worker_id: int) -> None:
    """A DataLoader's `worker_init_fn`: Ctrl-C is the main process's to handle. The worker is
    also seeded as `seed_everything(workers=True)` asks, which Lightning does itself only for
    a loader without a `worker_init_fn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id)


class NoLostInterrupt(Callback):
    """Every trainer gets one (`convlens.training.build_trainer`); nothing to configure.
    From set-up to teardown, a first Ctrl-C waits for the batch to end."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        install()
        _deferring.set()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        _deferring.clear()
        raise_pending()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        _deferring.clear()

    def _raise_pending(self, *args: Any) -> None:
        raise_pending()

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = _raise_pending
