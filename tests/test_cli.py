"""The command-line surface: Hydra multirun and `make ui`."""

import os
import socket
import subprocess
import time

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, run_train

TINY = ["trainer.max_epochs=1", "data.subset=500", "data.val_subset=500", "data.test_subset=500"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multirun_gives_each_job_its_own_mlflow_run(tmp_path, mnist_root):
    result = run_train(tmp_path, "-m", "optimizer.lr=1e-3,3e-4", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("convlens-mnist")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(float(r.data.params["optimizer.lr"]) for r in runs) == [3e-4, 1e-3]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_make_ui_serves_the_local_store(trained):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained.tracking_uri}
    ui = subprocess.Popen(
        ["make", "--no-print-directory", "ui", f"UI_PORT={port}"],
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
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)
