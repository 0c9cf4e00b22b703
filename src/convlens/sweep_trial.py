"""One trial of a sweep, as `make train` would run it: claim a place in the budget, sample the
search space, compose `conf/train.yaml` with the overrides, train as a child MLflow run, and
report to Optuna after every validation so the pruner can stop it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from pytorch_lightning import Callback, LightningModule, Trainer

from convlens import interrupts
from convlens.config import ConfigError, compose
from convlens.store import SWEEP_ID
from convlens.sweep import OVERRIDES_ATTR, RUN_ATTR, claim, train_command
from convlens.sweep_space import Dimension, trial_overrides

if TYPE_CHECKING:
    from convlens.sweep import Plan


class ReportToTrial(Callback):
    """Report the monitored metric to the Optuna trial after every validation, and stop the
    training (`optuna.TrialPruned`) when the pruner says the trial is hopeless."""

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial = trial
        self.monitor = monitor
        self.run_id: str | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from convlens.tracking import mlflow_logger

        logger = mlflow_logger(trainer)
        self.run_id = logger.run_id if logger is not None else None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        step = trainer.global_step
        self.trial.report(float(value), step=step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor} {float(value):.4f} at step {step}")


def trial_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """What `make train ARGS="<overrides>"` composes, writing into `output_dir`."""
    cfg = compose(overrides)
    output_dir.mkdir(parents=True, exist_ok=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it over: `${hydra:...}` reads HydraConfig
    return cfg


def suggest(trial: optuna.Trial, dim: Dimension) -> Any:
    d = dim.distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(dim.name, list(d.choices))
    if isinstance(d, IntDistribution):
        return trial.suggest_int(dim.name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(dim.name, d.low, d.high, step=d.step, log=d.log)
    raise ConfigError(f"sweep.params.{dim.name}: unsupported distribution {d!r}")


def objective(p: Plan, parent_run_id: str, trial: optuna.Trial) -> float:
    """One trial: claim a place in the budget, sample, train as `make train` would."""
    from convlens import sweep_record
    from convlens.training import train

    interrupts.install()
    interrupts.raise_pending()  # a Ctrl-C swallowed between trials ends the sweep here
    claim(trial, p.n_trials)
    values = {dim.name: suggest(trial, dim) for dim in p.space}
    overrides = [*p.fixed, *trial_overrides(p.space, values)]
    trial.set_user_attr(OVERRIDES_ATTR, overrides)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
    folder = Path(p.root_dir, "outputs", "sweeps", p.study_name, f"{stamp}-trial-{trial.number}")
    cfg = trial_config(overrides, folder)
    with open_dict(cfg):
        cfg.logger.mlflow.tags = {
            **(cfg.logger.mlflow.get("tags") or {}),
            "mlflow.parentRunId": parent_run_id,
            SWEEP_ID: p.study_name,
            "sweep.trial": str(trial.number),
            "sweep.overrides": json.dumps(overrides),
            "sweep.command": train_command(overrides),
        }
        cfg.logger.mlflow.run_name = f"{p.study_name}-trial-{trial.number}"
        cfg.callbacks.pop("checkpoint_on_stop", None)  # a trial reruns by its command, not resume
    reporter = ReportToTrial(trial, p.monitor)
    try:
        result = train(cfg, callbacks=[reporter])
    except optuna.TrialPruned:
        if reporter.run_id:
            trial.set_user_attr(RUN_ATTR, reporter.run_id)
            sweep_record.mark_child(p.tracking_uri, reporter.run_id, TrialState.PRUNED)
        raise
    except (Exception, KeyboardInterrupt, SystemExit) as error:
        if reporter.run_id:
            trial.set_user_attr(RUN_ATTR, reporter.run_id)
            sweep_record.mark_child(p.tracking_uri, reporter.run_id, TrialState.FAIL)
        if isinstance(error, SystemExit):  # Lightning's answer to Ctrl-C or SIGTERM
            raise KeyboardInterrupt from error  # so Optuna marks the trial FAIL, not RUNNING
        raise
    trial.set_user_attr(RUN_ATTR, result.run_id)
    sweep_record.mark_child(p.tracking_uri, result.run_id, TrialState.COMPLETE)
    return result.val_acc_best
