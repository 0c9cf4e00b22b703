"""Training survives being killed: resume continues the same MLflow run from its last checkpoint."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import run_train, spawn_train, with_store
from tests.test_pipelines import run_module

# 125 steps an epoch: long enough to interrupt, short enough for CI.
ARGS = ["experiment=smoke", "trainer.max_epochs=3", "data.subset=8000", "registry.enabled=false"]


def wait_for_first_epoch(workdir: Path, process: subprocess.Popen) -> Path:
    """The checkpoint folder, once epoch 1 has been checkpointed (epoch 2 is then running).

    Lightning writes the epoch's best checkpoint first and `last.ckpt` after it (each
    atomically): a kill between the two leaves nothing to resume from, so wait for both."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = list(workdir.glob("outputs/*/*/checkpoints/epoch00-*.ckpt"))
        if found and (found[0].parent / "last.ckpt").is_file():
            return found[0].parent
        assert process.poll() is None, (workdir / "train.log").read_text()[-3000:]
        time.sleep(0.1)
    process.kill()
    pytest.fail("epoch 1 was not checkpointed within 300 s")


def only_run(workdir: Path):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("convlens-mnist").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def interrupted_then_resumed(tmp_path_factory, sig: int):
    workdir = with_store(tmp_path_factory.mktemp(f"signal{sig}"))
    process = spawn_train(workdir, *ARGS)
    checkpoints = wait_for_first_epoch(workdir, process)
    if sig == signal.SIGTERM:
        time.sleep(1.0)  # well into epoch 2
    process.send_signal(sig)
    first_rc = process.wait(timeout=120)
    first_log = (workdir / "train.log").read_text()
    stopped_at = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = run_train(workdir, *ARGS, "resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return workdir, first_rc, stopped_at["global_step"], first_log


@pytest.fixture(scope="module")
def after_kill9(tmp_path_factory, mnist_root):
    return interrupted_then_resumed(tmp_path_factory, signal.SIGKILL)


@pytest.fixture(scope="module")
def after_sigterm(tmp_path_factory, mnist_root):
    return interrupted_then_resumed(tmp_path_factory, signal.SIGTERM)


def test_resume_after_kill9_finishes_the_same_run(after_kill9):
    workdir, *_ = after_kill9
    _, run = only_run(workdir)
    assert run.info.status == "FINISHED"
    assert "test/acc" in run.data.metrics


def test_resume_after_kill9_logs_every_epoch_once(after_kill9):
    workdir, *_ = after_kill9
    client, run = only_run(workdir)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert len(steps) == 3
    assert steps == sorted(set(steps))  # one value per epoch, in order


def test_resume_after_kill9_repeats_at_most_one_epoch_of_steps(after_kill9):
    workdir, _, stopped_step, _ = after_kill9
    client, run = only_run(workdir)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_step")]
    assert max(steps) >= 3 * 125 - 10  # logged every 10 steps, up to the last
    repeated = len(steps) - len(set(steps))
    assert repeated <= 125 // 10
    assert stopped_step == 125  # the end-of-epoch-1 checkpoint


def test_resume_after_kill9_continues_the_image_steps(after_kill9):
    workdir, *_ = after_kill9
    client, run = only_run(workdir)
    names = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    steps = {
        int(n.split("+step+")[1].split("+")[0])
        for n in names
        if "filters~conv1+" in n and n.endswith(".png")
    }
    assert steps == {0, 1, 2, 3}


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(after_sigterm):
    _, first_rc, stopped_step, log = after_sigterm
    assert first_rc == 0
    assert "checkpoint saved to" in log and "resume=latest" in log
    assert 125 < stopped_step < 375  # mid-epoch 2, not the epoch-1 checkpoint


def test_resume_after_sigterm_finishes_the_same_run(after_sigterm):
    workdir, *_ = after_sigterm
    client, run = only_run(workdir)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 3


def test_resume_of_a_finished_run_is_a_one_line_error(tmp_path, trained):
    result = run_train(trained.workdir, f"resume={trained.run_id}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: resume={trained.run_id}: that run already finished; nothing to resume"
    )


@pytest.mark.parametrize("module", ["pipelines.train", "pipelines.release"])
def test_resume_latest_without_unfinished_runs_is_a_one_line_error(tmp_path, mnist_root, module):
    result = run_module(tmp_path, module, "resume=latest")
    assert result.returncode == 2
    assert "no unfinished run with a checkpoint" in result.stderr.strip().splitlines()[-1]
