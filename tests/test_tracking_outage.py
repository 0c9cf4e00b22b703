"""Training against a tracking server that goes away: nothing stalls for long, nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import MODEL_NAME, REPO, run_train, spawn_train
from tests.harness import free_port
from tests.mlflow_server import MlflowServer

OUTAGE_S = float(os.environ.get("CONVLENS_OUTAGE_S", "60"))
# Many short epochs, bounded by time rather than count, so training outlasts the outage
# however fast the machine is. Paced (a pause after each batch, `tests.pace`): an epoch of
# about 5 s that logs every second, while the other half of the test run keeps its core.
ARGS = [
    "trainer.max_epochs=10000",
    "data.subset=1920",
    "data.val_subset=500",
    "data.test_subset=500",
    "trainer.log_every_n_steps=5",
    "+callbacks.pace._target_=tests.pace.Pace",
    "+callbacks.pace.seconds=0.15",
]


def start_training(workdir: Path, uri: str, max_time: str) -> subprocess.Popen:
    overrides = [*ARGS, f"trainer.max_time={max_time}"]
    return spawn_train(workdir, *overrides, env={"MLFLOW_TRACKING_URI": uri})


def wait_for_first_epoch(workdir: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not list(workdir.glob("outputs/*/*/checkpoints/epoch00-*.ckpt")):
        assert process.poll() is None, (workdir / "train.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no epoch finished within 300 s"
        time.sleep(0.1)


def the_run(client: MlflowClient):
    runs = client.search_runs([client.get_experiment_by_name("convlens-mnist").experiment_id])
    assert len(runs) == 1
    return runs[0]


def image_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    names = [a.path for a in client.list_artifacts(run_id, "images")]
    prefix = key.replace("/", "~") + "+step+"
    return {
        int(n.split("+step+")[1].split("+")[0]) for n in names if prefix in n and n.endswith(".png")
    }


def outage_then_return(workdir: Path, server: MlflowServer) -> int:
    """Train; after the first epoch stop the server for OUTAGE_S, then bring it back."""
    server.start()
    process = start_training(
        workdir, server.uri, f"00:00:{int(OUTAGE_S + 60) // 60:02d}:{int(OUTAGE_S + 60) % 60:02d}"
    )
    try:
        wait_for_first_epoch(workdir, process)
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        return process.wait(timeout=OUTAGE_S + 600)
    finally:
        process.kill()


def server_gone_for_good(workdir: Path, server: MlflowServer) -> tuple[int, float]:
    """Train; after the first epoch stop the server for good. (exit status, seconds from the
    stop to the end of training)."""
    server.start()
    process = start_training(workdir, server.uri, "00:00:00:40")
    try:
        wait_for_first_epoch(workdir, process)
        server.stop()
        stopped = time.monotonic()
        rc = process.wait(timeout=600)
        return rc, time.monotonic() - stopped
    finally:
        process.kill()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, mnist_root) -> Iterator[dict]:
    """Both scenarios at once, each with its own server and training: they spend most of
    their time waiting (the outage, the time-bounded training), so running them side by side
    halves this module's time. Their servers stay up for the tests (the gone one stopped)."""
    workdirs = {name: tmp_path_factory.mktemp(name) for name in ("outage", "gone")}
    servers = {name: MlflowServer(workdir) for name, workdir in workdirs.items()}
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            outage = pool.submit(outage_then_return, workdirs["outage"], servers["outage"])
            gone = pool.submit(server_gone_for_good, workdirs["gone"], servers["gone"])
            yield {
                "outage": (workdirs["outage"], outage, servers["outage"]),
                "gone": (workdirs["gone"], gone, servers["gone"]),
            }
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def after_outage(scenarios) -> tuple[Path, int, MlflowClient]:
    workdir, future, server = scenarios["outage"]
    return workdir, future.result(), MlflowClient(server.uri)


@pytest.mark.slow
def test_training_finishes_through_an_outage(after_outage):
    workdir, rc, client = after_outage
    assert rc == 0, (workdir / "train.log").read_text()[-3000:]
    assert the_run(client).info.status == "FINISHED"


@pytest.mark.slow
def test_metrics_logged_during_the_outage_are_written_when_it_returns(after_outage):
    _, _, client = after_outage
    run = the_run(client)
    epochs = len(list(Path(run.data.tags["convlens.checkpoint_dir"]).parent.glob("final")))
    val = client.get_metric_history(run.info.run_id, "val/acc")
    assert epochs == 1
    assert len(val) == len({m.step for m in val}) >= 3
    assert [m.step for m in val] == sorted(m.step for m in val)


@pytest.mark.slow
def test_images_logged_during_the_outage_are_written_when_it_returns(after_outage):
    _, _, client = after_outage
    run = the_run(client)
    val_epochs = len(client.get_metric_history(run.info.run_id, "val/acc"))
    assert image_steps(client, run.info.run_id, "filters/conv1") == set(range(val_epochs + 1))


@pytest.mark.slow
def test_the_model_is_registered_after_an_outage(after_outage):
    _, _, client = after_outage
    assert (
        client.get_model_version_by_alias(MODEL_NAME, "champion").run_id
        == the_run(client).info.run_id
    )


@pytest.fixture(scope="module")
def gone(scenarios) -> tuple[Path, int, float, MlflowServer]:
    workdir, future, server = scenarios["gone"]
    rc, elapsed = future.result()
    return workdir, rc, elapsed, server


def test_training_finishes_when_the_server_is_gone_for_good(gone):
    workdir, rc, elapsed, _ = gone
    log = (workdir / "train.log").read_text()
    assert rc == 75, log[-3000:]
    assert elapsed < 40 + 30 + 60  # the rest of max_time, at most 30 s of stall, test and save


def test_it_says_what_was_not_logged_and_how_to_upload(gone):
    workdir, *_ = gone
    log = (workdir / "train.log").read_text()
    assert "did not answer" in log and "python -m pipelines.upload" in log
    assert "Traceback" not in log


def test_checkpoints_and_the_best_model_stay_on_disk(gone):
    workdir, *_ = gone
    assert list(workdir.glob("outputs/*/*/checkpoints/*.ckpt"))
    assert list(workdir.glob("outputs/*/*/final/model/model.safetensors"))
    assert list(workdir.glob("outputs/*/*/mlflow-outbox/manifest.json"))


def test_upload_sends_everything_once_the_server_is_back(gone):
    workdir, _, _, server = gone
    outbox = next(workdir.glob("outputs/*/*/mlflow-outbox"))
    server.start()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.upload", str(outbox)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(server.uri)
    run = the_run(client)
    assert run.info.status == "FINISHED"
    assert "test/acc" in run.data.metrics
    val_epochs = len(client.get_metric_history(run.info.run_id, "val/acc"))
    assert image_steps(client, run.info.run_id, "filters/conv1") == set(range(val_epochs + 1))
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").run_id == run.info.run_id
    assert not outbox.exists()


def test_unreachable_server_at_start_is_a_clear_error_within_30_s(tmp_path, mnist_root):
    started = time.monotonic()
    result = run_train(
        tmp_path, "experiment=smoke", env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the MLflow tracking server at http://127.0.0.1:")
    assert "unreachable" in last
