"""What a sweep leaves in MLflow: one parent run per study, each trial a nested child run.

The parent holds the search space (params), the best trial so far (`sweep.best.*` tags and the
`sweep/best_value` metric, stepped by the number of finished trials) and Optuna's plots, redrawn
whenever a worker finishes a trial. Several workers write to it at once, so it only gets what
is safe to write concurrently: tags (last writer wins, each computed from the whole study),
appended metric points, and whole image files (under a file lock for a local artifact store).
MLflow params cannot change once logged, so the best trial's params become params of the
parent only when the study is complete.
"""

from __future__ import annotations

import fcntl
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from convlens.store import SWEEP_ID, client
from convlens.tracking import local_artifact_location

if TYPE_CHECKING:
    from convlens.sweep import Plan

STATE_TAG = "sweep.state"  # on a child run: COMPLETE, PRUNED or FAIL, as Optuna has it
ROLE_TAG = "sweep.role"  # "parent" on the study's run
PLOTS_DIR = "optuna"
OBJECTIVE = "val/acc_best"  # what a trial returns: its best validation accuracy
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
RUN_STATUS = {TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
PARENT_WAIT_S = 60.0  # a joining worker waits this long for the creator's parent run


def experiment_id(mlflow: MlflowClient, p: Plan) -> str:
    found = mlflow.get_experiment_by_name(p.experiment)
    if found is not None:
        return found.experiment_id
    location = local_artifact_location(p.tracking_uri, p.root_dir)
    try:
        return mlflow.create_experiment(p.experiment, artifact_location=location)
    except MlflowException:  # another worker created it first
        return mlflow.get_experiment_by_name(p.experiment).experiment_id


def ensure_parent(p: Plan, study: optuna.Study, created: bool) -> str:
    """The study's parent run: created with the study, else the one its creator recorded."""
    from convlens.sweep import PARENT_ATTR, SweepError, safe_url

    mlflow = client(p.tracking_uri)
    if created:
        run = mlflow.create_run(
            experiment_id(mlflow, p),
            run_name=p.study_name,
            tags={SWEEP_ID: p.study_name, ROLE_TAG: "parent", "sweep.storage": safe_url(p.storage)},
        )
        space = {d.name: repr(d.distribution) for d in p.space}
        log_params(mlflow, run.info.run_id, space | {"n_trials": str(p.n_trials)})
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
        return run.info.run_id
    deadline = time.monotonic() + PARENT_WAIT_S
    while (run_id := study.user_attrs.get(PARENT_ATTR)) is None:
        if time.monotonic() > deadline:
            raise SweepError(
                f"study {p.study_name!r} has no MLflow parent run: its creator stopped before "
                "making one; start it again under another sweep.study_name"
            )
        time.sleep(1)
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise SweepError(
            f"study {p.study_name!r} logs to parent run {run_id}, which is not in "
            f"{p.tracking_uri}: point paths.tracking_uri at the store the study began with"
        ) from None
    if run.info.status != "RUNNING":
        mlflow.update_run(run_id, status="RUNNING")  # resumed: trials will be added
    return run_id


def log_params(mlflow: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    mlflow.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])


def mark_child(tracking_uri: str, run_id: str, state: TrialState) -> None:
    """Say on the trial's run what Optuna says of the trial; a pruned run ends KILLED."""
    mlflow = client(tracking_uri)
    mlflow.set_tag(run_id, STATE_TAG, state.name)
    if state in RUN_STATUS:
        mlflow.set_terminated(run_id, RUN_STATUS[state])


@contextmanager
def artifact_lock(artifact_uri: str) -> Iterator[None]:
    """One writer at a time into a local artifact folder (a copy there is not atomic); a
    tracking server's uploads replace whole objects and need none."""
    folder = local_folder(artifact_uri)
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def local_folder(artifact_uri: str) -> Path | None:
    if artifact_uri.startswith("file://"):
        return Path(artifact_uri.removeprefix("file://"))
    if "://" not in artifact_uri:
        return Path(artifact_uri)
    return None


def draw_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's history, importances and parallel coordinates as PNGs, those the study's
    trials allow (importances need two complete trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    drawn = []
    for name in PLOTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = getattr(plots, f"plot_{name}")(study, target_name=OBJECTIVE)
            except (ValueError, RuntimeError, ZeroDivisionError):
                plt.close("all")
                continue
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        figure.set_size_inches(10, 6)
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close("all")
        drawn.append(path)
    return drawn


def refresh(p: Plan, study: optuna.Study, parent_run_id: str) -> None:
    """Bring the parent run up to date with the study: best trial, counts, plots; at the end
    of the study, the best params as params and the run finished. Never fails a worker."""
    try:
        _refresh(p, study, parent_run_id)
    except Exception as error:
        print(f"sweep: could not update parent run {parent_run_id}: {error}", flush=True)


def stop_parent(p: Plan, study: optuna.Study, parent_run_id: str) -> None:
    """After Ctrl-C: the parent run is up to date and ends KILLED, unless workers elsewhere
    still run trials (the last of them finishes it). Resuming sets it RUNNING again."""
    refresh(p, study, parent_run_id)
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        client(p.tracking_uri).set_terminated(parent_run_id, "KILLED")


def _refresh(p: Plan, study: optuna.Study, parent_run_id: str) -> None:
    from convlens.sweep import RUN_ATTR, tally

    mlflow = client(p.tracking_uri)
    counts = tally(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    tags = {f"sweep.{s.name.lower()}": str(counts[s]) for s in TrialState}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        tags |= {"sweep.best_trial": str(best.number), "sweep.best_value": f"{best.value:.6g}"}
        tags |= {f"sweep.best.{name}": str(value) for name, value in best.params.items()}
        if RUN_ATTR in best.user_attrs:
            tags["sweep.best_run"] = best.user_attrs[RUN_ATTR]
        mlflow.log_metric(parent_run_id, "sweep/best_value", best.value, step=finished)
    for key, value in tags.items():
        mlflow.set_tag(parent_run_id, key, value)
    if complete:
        artifact_uri = mlflow.get_run(parent_run_id).info.artifact_uri
        with tempfile.TemporaryDirectory() as tmp:
            drawn = draw_plots(study, Path(tmp))
            with artifact_lock(artifact_uri):
                for path in drawn:
                    mlflow.log_artifact(parent_run_id, str(path), PLOTS_DIR)
    if finished >= p.n_trials:
        if complete:
            try:
                best_params = {f"best.{k}": str(v) for k, v in best.params.items()}
                log_params(mlflow, parent_run_id, best_params)
            except MlflowException:  # a resumed study whose best changed: the tags say it
                pass
        mlflow.set_terminated(parent_run_id, "FINISHED")
