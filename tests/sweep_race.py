"""The sweep workers' race without training (`tests/test_sweep_workers.py`), in a module of
its own: each worker process is spawned and imports it, so it imports only what a race needs
(the test module would bring torch and MLflow into every worker, about 8 s of CPU each)."""

from __future__ import annotations

import random
import time

import optuna

from convlens import sweep
from convlens.sweep import claim


def quick(p, parent_run_id, trial) -> float:
    """A trial without training, long enough for the workers to overlap."""
    claim(trial, p.n_trials)
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(random.uniform(0.0, 0.3))
    trial.report(x, step=0)
    if x < 0.2:
        raise optuna.TrialPruned()
    return x


def race(overrides: list[str], index: int) -> int:
    p = sweep.plan(overrides)
    return sweep.work(p, "no-parent-run", index, run_trial=quick, record=False)
