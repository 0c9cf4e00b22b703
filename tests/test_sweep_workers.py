"""Workers share one study on a real PostgreSQL (started as tests/test_tracking_server.py does)
and end it with exactly the trial budget: none more, none run twice."""

from __future__ import annotations

import multiprocessing

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from convlens import sweep
from convlens.sweep import SURPLUS_ATTR, SurplusTrial, claim
from tests.conftest import MODEL_NAME
from tests.postgres_cluster import PASSWORD
from tests.sweep_race import race
from tests.test_pipelines import run_module
from tests.test_sweep import TINY

pytest_plugins = ["tests.postgres_cluster"]  # the `cluster` fixture


def database(cluster, name: str) -> str:
    """A fresh database in the test cluster, as compose's init script makes `optuna`."""
    return cluster.create_database(name)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# --- the budget under a race, without training ------------------------------------------------


def test_a_trial_created_after_the_budget_filled_gives_its_place_up(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db")
    first = study.ask()
    claim(first, 2)
    claim(study.ask(), 2)
    third = study.ask()
    with pytest.raises(SurplusTrial):
        claim(third, 2)
    study.tell(third, state=TrialState.FAIL)
    study.tell(first, state=TrialState.FAIL)  # a worker died: its place is free again
    claim(study.ask(), 2)


def test_many_workers_on_postgres_finish_exactly_the_budget(cluster, tmp_path, monkeypatch):
    storage = database(cluster, "race")
    monkeypatch.chdir(tmp_path)
    overrides = [
        "hparams_search=mnist_optuna",
        f"sweep.storage={storage}",
        "sweep.study_name=race",
        "sweep.n_trials=12",
        "~sweep.pruner",
        "+sweep.pruner={_target_:optuna.pruners.NopPruner}",
    ]
    p = sweep.plan(overrides)
    assert sweep.create_or_join(p, sweep.open_storage(p))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ran = pool.starmap(race, [(overrides, i) for i in range(4)])
    study = optuna.load_study(study_name="race", storage=storage)
    done = finished(study)
    assert len(done) == 12 == sum(ran)
    assert len({t.number for t in done}) == 12
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    surplus = [t for t in study.get_trials() if SURPLUS_ATTR in t.user_attrs]
    assert all(t.state == TrialState.FAIL and not t.params for t in surplus)


# --- make sweep WORKERS=2 -------------------------------------------------------------------


def test_two_worker_processes_share_one_study_on_postgres(cluster, tmp_path, mnist_root):
    storage = database(cluster, "optuna")
    result = run_module(
        tmp_path,
        "pipelines.sweep",
        *TINY,
        "sweep.n_trials=3",
        "sweep.workers=2",
        env={"CONVLENS_SWEEP_STORAGE": storage},
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 worker(s) here" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert not (tmp_path / "optuna.db").exists()  # the study is in PostgreSQL, not a file
    study = optuna.load_study(study_name=MODEL_NAME, storage=storage)
    done = finished(study)
    assert len(done) == 3
    runs = [t.user_attrs["mlflow_run_id"] for t in done]
    assert len(set(runs)) == 3  # no trial ran twice
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(MODEL_NAME).experiment_id
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert sorted(r.info.run_id for r in children) == sorted(runs)
