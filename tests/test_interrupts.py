"""Ctrl-C stops training even when Python swallows its KeyboardInterrupt in a finalizer
(`convlens.interrupts`). A real SIGINT to this process, delivered while a `__del__` runs, as the
garbage collector runs SQLAlchemy's weakref callbacks in a sweep."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time

import numpy as np
import pytest
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning import Callback, Trainer, seed_everything
from pytorch_lightning.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader, Dataset

from convlens.interrupts import (
    STOPPING,
    NoLostInterrupt,
    ignore_in_worker,
    install,
    raise_pending,
)

STEPS = 40
CTRL_C_AT = 5


class SwallowsCtrlC:
    """Ctrl-C arrives while this object is finalized: its KeyboardInterrupt is printed as
    "Exception ignored" and goes no further."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside __del__


class CtrlCMidWork(Callback):
    """Ctrl-C arrives in the middle of a callback's work, as in the middle of a database
    write; `finished` says whether the work got to its end."""

    def __init__(self) -> None:
        self.finished = False
        self.stopped_at: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == CTRL_C_AT:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here
            self.finished = True

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.stopped_at = trainer.global_step


class CtrlCInAFinalizer(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == CTRL_C_AT:
            SwallowsCtrlC()  # made and finalized at once


def fit(*callbacks: Callback, first: Callback | None = None) -> Trainer:
    trainer = Trainer(
        max_steps=STEPS,
        callbacks=[first or CtrlCInAFinalizer(), *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    return trainer


@pytest.fixture(autouse=True)
def own_sigint():
    """Each test starts with Python's own SIGINT handling, and leaves this process as it was
    (Lightning ignores SIGINT after it handles one), nothing remembered."""
    handler, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = hook
    with contextlib.suppress(KeyboardInterrupt):
        NoLostInterrupt().teardown(None, None, "fit")  # no longer deferring, nothing pending


@pytest.fixture
def printed(monkeypatch) -> list[type]:
    """What Python reports as "Exception ignored in ..." (`sys.unraisablehook`), by type."""
    seen: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(type(u.exc_value)))
    return seen


def test_without_the_guard_a_ctrl_c_in_a_finalizer_is_lost(printed):
    trainer = fit()
    assert trainer.global_step == STEPS  # trained to the end: the Ctrl-C did nothing
    assert printed == [KeyboardInterrupt]


def test_a_ctrl_c_in_a_finalizer_still_stops_training_and_prints_no_traceback(printed):
    with pytest.raises(SystemExit) as stopped:  # Lightning's answer to a KeyboardInterrupt
        fit(NoLostInterrupt())
    assert stopped.value.code == 1
    assert printed == []
    raise_pending()  # it was raised, and is not raised again


def test_while_training_a_ctrl_c_waits_for_the_end_of_the_batch():
    work = CtrlCMidWork()
    guard = NoLostInterrupt()
    with pytest.raises(SystemExit):
        fit(guard, first=work)
    assert work.finished  # not cut short where the Ctrl-C landed
    assert work.stopped_at == CTRL_C_AT  # but stopped at the end of that batch
    install()  # Lightning ignores SIGINT after its shutdown; the guard's handler again
    with pytest.raises(KeyboardInterrupt):  # out of training: at once again
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_while_training_a_second_ctrl_c_raises_at_once(capfd):
    install()
    NoLostInterrupt().setup(None, None, "fit")
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the first: remembered only, and said
    assert capfd.readouterr().err.strip() == STOPPING.decode().strip()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_after_install_ctrl_c_raises_as_python_does_and_a_swallowed_one_once_more():
    install()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    with pytest.raises(KeyboardInterrupt):
        raise_pending()
    raise_pending()  # once only


class WorkerPids(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> int:
        return os.getpid()


def test_dataloader_workers_leave_ctrl_c_to_the_main_process():
    loader = DataLoader(WorkerPids(), batch_size=4, num_workers=1, worker_init_fn=ignore_in_worker)
    batches = iter(loader)
    worker = int(next(batches)[0])
    os.kill(worker, signal.SIGINT)
    time.sleep(0.5)
    assert len(list(batches)) == 9  # the worker lived on and sent the rest


class RandomNumbers(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        return int(np.random.randint(1 << 30))


def test_dataloader_workers_are_seeded_as_lightning_would_seed_them():
    def draws(worker_init_fn) -> list[int]:
        seed_everything(7, workers=True)
        loader = DataLoader(RandomNumbers(), num_workers=2, worker_init_fn=worker_init_fn)
        return [int(x) for x in loader]

    assert draws(ignore_in_worker) == draws(functools.partial(pl_worker_init_function, rank=0))


def test_every_trainer_the_training_builds_has_the_guard():
    from omegaconf import OmegaConf

    from convlens.training import build_trainer

    trainer_cfg = {"_target_": "pytorch_lightning.Trainer", "max_steps": 1, "logger": False}
    cfg = OmegaConf.create({"trainer": trainer_cfg, "callbacks": {}, "logger": {}})
    trainer = build_trainer(cfg)
    assert sum(isinstance(c, NoLostInterrupt) for c in trainer.callbacks) == 1
    assert isinstance(trainer.callbacks[0], NoLostInterrupt)  # its on_exception runs first
