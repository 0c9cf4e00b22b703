"""A hyperparameter sweep: one Optuna study in a database, worked on by any number of processes.

Every trial is a `make train`: its config is `conf/train.yaml` composed by Hydra with the
sweep's fixed overrides plus the sampled ones, trained by `convlens.training.train`, logged as a
child of the study's MLflow parent run (`convlens.sweep_record`). The study lives in the storage
`sweep.storage` names, so a killed sweep resumes and other machines join: Optuna's heartbeat
marks a dead worker's trial FAIL, and the budget counts finished (complete or pruned) trials
only. A worker takes a trial only while finished + running trials stay under the budget, and
checks again once its trial exists, so concurrent workers never run more than the budget.
"""

from __future__ import annotations

import random
import shlex
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from convlens import UserError
from convlens.config import ConfigError, compose
from convlens.sweep_space import Dimension, search_space, split_overrides

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what the budget counts
TAKEN = (TrialState.RUNNING, TrialState.WAITING, *FINISHED)  # what fills the budget
OVERRIDES_ATTR = "overrides"  # trial user attr: the overrides that rerun it
RUN_ATTR = "mlflow_run_id"  # trial user attr: its MLflow child run
SURPLUS_ATTR = "surplus"  # trial user attr: created after the budget filled, never run


class SurplusTrial(Exception):
    """A trial created while other workers had already filled the budget: never run."""


PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the MLflow run the trials nest under
POLL_S = 2.0  # how often a waiting worker looks at the study again


class SweepError(UserError):
    """A sweep that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """What every worker of one sweep agrees on, from the composed config."""

    fixed: list[str]  # overrides of every trial, before the sampled ones (no sweep.*)
    space: list[Dimension]
    study_name: str
    storage: str
    n_trials: int
    workers: int
    direction: str
    monitor: str
    heartbeat_interval: int
    grace_period: int
    max_failures: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    tracking_uri: str
    experiment: str
    root_dir: str
    mlflow_ui: str


def plan(overrides: Sequence[str]) -> Plan:
    """The sweep `overrides` ask for; sweep overrides (`key=choice(...)`) join the space."""
    fixed, swept = split_overrides(overrides)
    cfg = compose(fixed)
    if "sweep" not in cfg:
        raise ConfigError("no search space: add hparams_search=mnist_optuna (conf/hparams_search)")
    sweep = cfg.sweep
    params = {**OmegaConf.to_container(sweep.params, resolve=True), **swept}
    n_trials, workers = int(sweep.n_trials), int(sweep.workers)
    if n_trials < 1 or workers < 1:
        raise ConfigError(f"sweep.n_trials ({n_trials}) and sweep.workers ({workers}) must be >= 1")
    if not cfg.get("logger") or "mlflow" not in cfg.logger:
        raise ConfigError("a sweep logs its trials to MLflow: keep logger=mlflow")
    return Plan(
        fixed=[o for o in fixed if not o.lstrip("+~").startswith("sweep.")],
        space=search_space(params, cfg.model),
        study_name=str(sweep.study_name),
        storage=str(sweep.storage),
        n_trials=n_trials,
        workers=workers,
        direction=str(sweep.direction),
        monitor=str(sweep.monitor),
        heartbeat_interval=int(sweep.heartbeat_interval),
        grace_period=int(sweep.grace_period),
        max_failures=int(sweep.max_failures),
        sampler=OmegaConf.to_container(sweep.sampler, resolve=True),
        pruner=OmegaConf.to_container(sweep.pruner, resolve=True),
        tracking_uri=str(cfg.logger.mlflow.tracking_uri),
        experiment=str(cfg.logger.mlflow.experiment_name),
        root_dir=str(cfg.paths.root_dir),
        mlflow_ui=str(cfg.paths.mlflow_ui).rstrip("/"),
    )


def safe_url(url: str) -> str:
    """The storage URL with its password hidden, for output and tags."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def open_storage(p: Plan) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats; a bad URL or an unreachable server is one line."""
    engine_kwargs: dict[str, Any] = {}
    if p.storage.startswith("sqlite:"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # workers wait for the file lock
        Path(p.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                p.storage,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=p.heartbeat_interval,
                grace_period=p.grace_period,
            )
    except Exception as error:
        reason = " ".join(str(error).split())[:300]
        raise ConfigError(
            f"sweep.storage {safe_url(p.storage)}: cannot open it ({reason}); set sweep.storage "
            "or CONVLENS_SWEEP_STORAGE to an SQLAlchemy URL that answers"
        ) from None


def load_study(p: Plan, storage: optuna.storages.BaseStorage, seed_offset: int | None):
    """The study with this worker's sampler: seed + offset in a new study, a fresh seed when
    resuming or joining one (the first run's random trials would otherwise come again)."""
    sampler_cfg = dict(p.sampler)
    if seed_offset is None or sampler_cfg.get("seed") is None:
        sampler_cfg["seed"] = None
    else:
        sampler_cfg["seed"] = int(sampler_cfg["seed"]) + seed_offset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = instantiate(sampler_cfg)
    return optuna.load_study(
        study_name=p.study_name, storage=storage, sampler=sampler, pruner=instantiate(p.pruner)
    )


def create_or_join(p: Plan, storage: optuna.storages.BaseStorage) -> bool:
    """Create the study, or find it there already; True when this call created it."""
    try:
        optuna.create_study(study_name=p.study_name, storage=storage, direction=p.direction)
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def claim(trial: optuna.Trial, n_trials: int) -> None:
    """Keep this trial only if, with it, no more than `n_trials` trials are running or done.

    Workers check before they create a trial, but two may create one at the same moment. The
    trial exists (committed) before this check, so of any trials racing for the last place,
    the one that checks last sees all the others and gives its place up: never more than the
    budget run. (Both may give up; their workers try again.)
    """
    taken = trial.study.get_trials(deepcopy=False, states=TAKEN)
    if sum(t.number != trial.number for t in taken) >= n_trials:
        trial.set_user_attr(SURPLUS_ATTR, "the budget was full when it began: never run")
        raise SurplusTrial(f"trial {trial.number}: the budget of {n_trials} is taken")


def train_command(overrides: Sequence[str]) -> str:
    return f"make train ARGS={shlex.quote(' '.join(overrides))}"


def tally(study: optuna.Study) -> dict[TrialState, int]:
    trials = study.get_trials(deepcopy=False)
    return {state: sum(t.state == state for t in trials) for state in TrialState}


def work(
    p: Plan,
    parent_run_id: str,
    seed_offset: int | None,
    run_trial: Callable[[Plan, str, optuna.Trial], float] | None = None,
    record: bool = True,
) -> int:
    """Run trials until the study holds `n_trials` finished ones; returns how many this ran.

    `run_trial` defaults to `sweep_trial.objective` (train); `record` keeps the parent run up
    to date.
    """
    if run_trial is None:  # training and tracking are imported only when they are used
        from convlens.sweep_trial import objective as run_trial
    if record:
        from convlens import sweep_record

    study = load_study(p, open_storage(p), seed_offset)
    ran = failures = 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a killed worker's trial: FAIL
        counts = tally(study)
        finished = sum(counts[s] for s in FINISHED)
        if finished >= p.n_trials:
            return ran
        if finished + counts[TrialState.RUNNING] >= p.n_trials:
            time.sleep(POLL_S)  # the rest are running elsewhere; take over if they die
            continue
        surplus = False

        def attempt(trial: optuna.Trial) -> float:
            nonlocal surplus
            try:
                return run_trial(p, parent_run_id, trial)
            except SurplusTrial:
                surplus = True
                raise

        try:
            study.optimize(attempt, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)
        except UserError:
            raise
        except Exception as error:
            failures += 1
            print(f"sweep: a trial failed ({type(error).__name__}: {error})", flush=True)
            if failures >= p.max_failures:
                raise SweepError(
                    f"{failures} trials in a row failed (sweep.max_failures); the last: "
                    f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                ) from None
        else:
            if surplus:  # lost a race for the last place: let the others go first
                time.sleep(POLL_S * random.uniform(0.5, 1.5))
                continue
            failures = 0
            ran += 1
        if record:
            sweep_record.refresh(p, study, parent_run_id)
