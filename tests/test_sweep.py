"""`make sweep` as a user runs it: a real Optuna study in an SQLite file, every trial a real
training run nested under the study's MLflow parent run; resumed after a `kill -9`; pruning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from convlens.config import compose
from pipelines.ui import LOCAL_UI_ENV
from tests.conftest import MODEL_NAME, train_env
from tests.test_pipelines import run_module
from tests.ui_fixtures import needs_chromium

# Seconds a trial, not minutes: a smoke run on 1,000 images (OneCycle needs a few steps).
TINY = [
    "hparams_search=mnist_optuna",
    "experiment=smoke",
    "data.subset=1000",
    "data.val_subset=500",
    "data.test_subset=500",
]
BAD_SPACE = [  # learning rates that cannot learn, and a pruner that wants 50% accuracy
    "~sweep.params",
    '+sweep.params={optimizer.lr:"tag(log,interval(1e-9,1e-8))"}',
    "~sweep.pruner",
    "+sweep.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.5}",
]


def study_of(workdir: Path, name: str = MODEL_NAME) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/optuna.db")


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def trials_so_far(workdir: Path, output: Path) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, once the running sweep has said that the study exists: before
    that its database may be half made, and opening it then races the sweep's own set-up
    (both write the schema's version: `UNIQUE constraint failed: alembic_version`)."""
    if "study '" not in output.read_text():
        return []
    return study_of(workdir).get_trials()


def sweep(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_module(workdir, "pipelines.sweep", *TINY, *args, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@dataclass(frozen=True)
class Swept:
    workdir: Path
    output: str
    study: optuna.Study
    client: MlflowClient
    parent: str


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mnist_root) -> Swept:
    """Three trials, one worker."""
    workdir = tmp_path_factory.mktemp("sweep")
    result = sweep(workdir, "sweep.n_trials=3")
    study = study_of(workdir)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    return Swept(workdir, result.stdout, study, client, study.user_attrs["mlflow_parent_run_id"])


def children(s: Swept) -> list:
    experiment = s.client.get_experiment_by_name(MODEL_NAME).experiment_id
    return s.client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{s.parent}'"
    )


def test_the_study_is_in_a_database_with_the_trial_budget(swept):
    assert (swept.workdir / "optuna.db").exists()
    assert states(swept.study) == ["COMPLETE"] * 3


def test_every_trial_is_a_child_run_of_one_parent_run(swept):
    runs = children(swept)
    assert len(runs) == 3
    assert {r.info.run_id for r in runs} == {
        t.user_attrs["mlflow_run_id"] for t in swept.study.get_trials()
    }
    assert {r.data.tags["sweep.state"] for r in runs} == {"COMPLETE"}
    parent = swept.client.get_run(swept.parent)
    assert parent.data.tags["sweep.role"] == "parent"
    assert parent.info.status == "FINISHED"


def test_the_parent_holds_the_best_trial_and_optunas_plots(swept):
    parent = swept.client.get_run(swept.parent)
    best = swept.study.best_trial
    assert parent.data.tags["sweep.best_trial"] == str(best.number)
    assert parent.data.tags["sweep.best_run"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.params["best.optimizer.lr"] == str(best.params["optimizer.lr"])
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(best.value)
    plots = {Path(a.path).name for a in swept.client.list_artifacts(swept.parent, "optuna")}
    assert plots == {
        "optimization_history.png",
        "param_importances.png",
        "parallel_coordinate.png",
    }
    png = swept.client.download_artifacts(swept.parent, "optuna/optimization_history.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trials_are_not_registered(swept):
    assert swept.client.search_registered_models() == []


def test_a_trials_recorded_overrides_compose_its_config(swept, monkeypatch):
    """`make train ARGS="<overrides>"` reruns the trial: same model, data, optimizer, trainer."""
    trial = swept.study.best_trial
    run_id = trial.user_attrs["mlflow_run_id"]
    overrides = trial.user_attrs["overrides"]
    assert json.loads(swept.client.get_run(run_id).data.tags["sweep.overrides"]) == overrides
    logged = yaml.safe_load(
        Path(swept.client.download_artifacts(run_id, "config.yaml")).read_text()
    )
    monkeypatch.setenv("CONVLENS_DATA_DIR", train_env()["CONVLENS_DATA_DIR"])  # as the trial had
    monkeypatch.chdir(swept.workdir)
    rerun = compose(overrides)
    for section in ("model", "data", "optimizer", "scheduler", "trainer", "module", "registry"):
        again = yaml.safe_load(yaml.safe_dump(_plain(rerun[section])))
        if section == "trainer":
            again.pop("default_root_dir"), logged[section].pop("default_root_dir")
        assert again == logged[section], section
    assert rerun.optimizer.lr == trial.params["optimizer.lr"]
    assert rerun.model.layers[0].out_channels == trial.params["model.layers.conv1.out_channels"]


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def test_the_report_ranks_trials_and_prints_the_commands_that_release_the_best(swept):
    result = run_module(swept.workdir, "pipelines.sweep_report", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    best = swept.study.best_trial
    run_id = best.user_attrs["mlflow_run_id"]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("trial"))
    assert lines[header + 1].split()[:2] == [str(best.number), "complete"]
    assert "conv1.out_channels" in lines[header]
    assert f"best       trial {best.number}, run {run_id}" in result.stdout
    assert f"--run-id {run_id}" in result.stdout
    assert "make train ARGS='" + " ".join(best.user_attrs["overrides"]) + "'" in result.stdout
    tags = {r.info.run_id: r.data.tags["sweep.best"] for r in children(swept)}
    assert tags == {r: str(r == run_id).lower() for r in tags}


def test_the_same_command_again_resumes_the_finished_study_without_new_trials(swept):
    result = sweep(swept.workdir, "sweep.n_trials=3")
    assert f"study '{MODEL_NAME}'" in result.stdout and ": resumed," in result.stdout
    assert states(study_of(swept.workdir)) == ["COMPLETE"] * 3


# --- a worker killed mid-trial --------------------------------------------------------------


def test_a_killed_sweep_resumes_keeps_its_trials_and_reaches_its_budget(tmp_path, mnist_root):
    args = [*TINY, "sweep.n_trials=2", "sweep.heartbeat_interval=1", "sweep.grace_period=3"]
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - the process outlives this line
    first = subprocess.Popen(
        [sys.executable, "-m", "pipelines.sweep", *args],
        cwd=tmp_path,
        env=train_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    try:
        while True:  # one trial done, the next one training: then kill -9
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no second trial began"
            found = [t.state.name for t in trials_so_far(tmp_path, tmp_path / "first.log")]
            if found == ["COMPLETE", "RUNNING"]:
                break
            time.sleep(1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        log.close()
    before = study_of(tmp_path).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]

    result = run_module(tmp_path, "pipelines.sweep", *args, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = study_of(tmp_path).get_trials()
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert (after[0].value, after[0].params) == (before[0].value, before[0].params)
    assert ": resumed," in result.stdout


def test_ctrl_c_marks_the_running_trial_failed_and_says_how_to_resume(tmp_path, mnist_root):
    args = [*TINY, "sweep.n_trials=1", "trainer.max_epochs=100"]  # long enough to interrupt
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        sweeping = subprocess.Popen(
            [sys.executable, "-m", "pipelines.sweep", *args],
            cwd=tmp_path,
            env=train_env(),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            while True:  # a validation reported: the trial is inside training
                assert sweeping.poll() is None, (tmp_path / "err.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the trial never reported"
                trials = trials_so_far(tmp_path, tmp_path / "out.log")
                if trials and trials[0].intermediate_values:
                    break
                time.sleep(1)
            os.killpg(sweeping.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole group
            sweeping.wait(timeout=120)
        finally:
            if sweeping.poll() is None:
                os.killpg(sweeping.pid, signal.SIGKILL)
    stderr = (tmp_path / "err.log").read_text()
    assert sweeping.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: sweep interrupted; finished trials are kept and a running one is marked failed. "
        f"The same command resumes study '{MODEL_NAME}'"
    )
    study = study_of(tmp_path)
    assert states(study) == ["FAIL"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    child = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert (child.info.status, child.data.tags["sweep.state"]) == ("FAILED", "FAIL")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "KILLED"


# --- pruning ----------------------------------------------------------------------------------


def test_hopeless_trials_are_pruned_in_optuna_and_in_mlflow(tmp_path, mnist_root):
    sweep(tmp_path, "sweep.n_trials=2", *BAD_SPACE)
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(max(t.intermediate_values.values()) < 0.5 for t in trials)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for trial in trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert (run.info.status, run.data.tags["sweep.state"]) == ("KILLED", "PRUNED")
        assert "test/acc" not in run.data.metrics  # stopped before testing
    report = run_module(tmp_path, "pipelines.sweep_report", *TINY, *BAD_SPACE)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "nothing to release" in report.stdout
    assert report.stdout.count(" pruned ") == 2


def test_library_chatter_goes_to_the_sweep_log_not_the_terminal(swept):
    log = swept.workdir / "outputs" / "sweeps" / MODEL_NAME / "sweep.log"
    assert "WARNING mlflow" not in swept.output
    assert log.is_file() and "mlflow" in log.read_text()


@needs_chromium
def test_the_mlflow_ui_groups_the_trials_under_the_study_run(swept):
    """As a user sees it: the experiment's runs page lists one run, the study, and expanding
    it shows the three trials."""
    from playwright.sync_api import sync_playwright

    from tests.harness import HOST, ServerProcess, free_port
    from tests.ui_screenshot import launch

    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [mlflow, "ui", "--backend-store-uri", f"sqlite:///{swept.workdir}/mlflow.db"]
    command += ["--host", HOST, "--port", str(port)]
    env = {**os.environ, **LOCAL_UI_ENV}  # as `make ui` starts it
    experiment = swept.client.get_experiment_by_name(MODEL_NAME).experiment_id
    with (
        ServerProcess(
            command,
            log=swept.workdir / "ui.log",
            ready_url=f"http://{HOST}:{port}/health",
            env=env,
            timeout_s=300,
            name="mlflow ui",
        ),
        sync_playwright() as p,
    ):
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.goto(f"http://{HOST}:{port}/#/experiments/{experiment}/runs")
        rows = page.locator(".ag-center-cols-container .ag-row")
        study = page.locator(".ag-row a", has_text=MODEL_NAME).first
        study.wait_for(timeout=60_000)
        assert rows.count() == 1  # the trials are folded under their study
        box = study.bounding_box()
        page.mouse.click(box["x"] - 31, box["y"] + box["height"] / 2)  # its expand toggle
        page.wait_for_function(
            "n => document.querySelectorAll('.ag-center-cols-container .ag-row').length === n",
            arg=4,
            timeout=60_000,
        )
        page.screenshot(path=swept.workdir / "mlflow-sweep.png")
        browser.close()
