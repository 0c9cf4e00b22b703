"""The command-line surface: what a training shows, Hydra multirun and `make ui`."""

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from pipelines.ui import LOCAL_UI_ENV
from tests.conftest import REPO, run_train, with_store
from tests.harness import free_port

TINY = ["trainer.max_epochs=1", "data.subset=500", "data.val_subset=500", "data.test_subset=500"]


def test_multirun_gives_each_job_its_own_mlflow_run(tmp_path, mnist_root):
    result = run_train(with_store(tmp_path), "-m", "optimizer.lr=1e-3,3e-4", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("convlens-mnist")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(float(r.data.params["lr"]) for r in runs) == [3e-4, 1e-3]
    assert {r.info.status for r in runs} == {"FINISHED"}


# What a training printed on the terminal before `convlens.console`, none of it for its user:
# Lightning's tips and hardware lines, torch/Lightning warnings, MLflow's logged warnings,
# database set-up lines and artifact-download progress bars.
NOISE = (
    "Tip:",  # "💡 Tip: For seamless cloud logging ... try installing [litlogger]"
    "litlogger",
    "GPU available",
    "Seed set to",
    "Warning",  # FutureWarning, UserWarning, DeprecationWarning (not our own `warning: ...`)
    "WARNING",  # Lightning's and MLflow's logged warnings
    "deprecated",  # `isinstance(treespec, LeafSpec)` is deprecated
    "Pickle",  # MLflow: "Saving pytorch model by Pickle or CloudPickle format ..."
    "Creating initial MLflow database tables",
    "Downloading artifacts",  # MLflow's tqdm bars
)


def test_train_shows_progress_and_summary_and_logs_the_rest(tmp_path, mnist_root):
    result = run_train(with_store(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    terminal = result.stdout + result.stderr
    for wanted in ("Epoch 0/0", "Testing", "\nrun  ", "test acc", "registered convlens-mnist"):
        assert wanted in terminal, terminal[-3000:]
    assert [noise for noise in NOISE if noise in terminal] == [], terminal[-3000:]
    (log,) = tmp_path.glob("outputs/*/*/train.log")  # Hydra's <output_dir>/<job name>.log
    kept = log.read_text()
    assert "[py.warnings][WARNING]" in kept  # warnings captured there, not dropped
    for noise in ("Tip:", "GPU available", "Warning: ", "Pickle"):
        assert noise in kept, kept[-3000:]


@pytest.fixture(scope="module")
def made_ui(trained) -> Iterator[tuple[str, int]]:
    """`make ui` on the trained store, answering: its base URL, and its session (process
    group) id, which every process it starts shares."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained.tracking_uri}
    for name in LOCAL_UI_ENV:
        env.pop(name, None)
    ui = subprocess.Popen(
        ["make", "--no-print-directory", "ui", f"ARGS=paths.mlflow_ui=http://127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or ui.poll() is not None:
                pytest.fail("make ui did not start serving within 90 s")
            time.sleep(0.5)
        yield base, ui.pid
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


def session_commands(session: int) -> list[str]:
    """The command lines of the processes in `session` (from /proc)."""
    commands = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # after state, ppid, pgrp: the session id
                commands.append(
                    (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return commands


def test_make_ui_serves_the_local_store(trained, made_ui):
    base, _ = made_ui
    found = httpx.get(
        f"{base}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "convlens-mnist"},
        timeout=10,
    )
    assert found.status_code == 200
    runs = httpx.post(
        f"{base}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [found.json()["experiment"]["experiment_id"]]},
        timeout=10,
    )
    assert trained.run_id in {r["info"]["run_id"] for r in runs.json()["runs"]}


def test_make_ui_runs_one_mlflow_worker_and_no_job_runner(made_ui):
    _, session = made_ui
    commands = session_commands(session)
    servers = [c for c in commands if "uvicorn" in c and "mlflow.server" in c]
    assert len(servers) == 1 and "--workers 1 " in servers[0], commands
    extra = [c for c in commands if any(w in c for w in ("multiprocessing", "_job_runner", "huey"))]
    assert extra == [], commands
