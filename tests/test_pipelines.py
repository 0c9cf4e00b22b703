"""The release steps run one at a time (evaluate, register, sweep report), the sweep's config,
and the multi-node trainer config: real CLIs on a real MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from convlens.cli import run_cli
from pipelines import evaluate, register, sweep_report
from tests.conftest import MODEL_NAME, REPO, mnist_dir


def run_module(workdir: Path, module: str, *args: str, env: dict | None = None, timeout=600):
    """`python -m <module> args` in `workdir`, where the default sqlite store is mlflow.db."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CONVLENS_DATA_DIR": str(mnist_dir()),
        "PYTHONUNBUFFERED": "1",
        "BENTOML_HOME": str(workdir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=workdir,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def store(trained, tmp_path_factory) -> Path:
    """A private copy of the session's trained store (its artifacts are only read), so the
    steps' tags and registrations do not leak into other tests."""
    workdir = tmp_path_factory.mktemp("steps")
    shutil.copy(trained.workdir / "mlflow.db", workdir / "mlflow.db")
    return workdir


def client_of(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir}/mlflow.db")


# --- evaluate --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(store) -> subprocess.CompletedProcess:
    """`pipelines.evaluate` with no run named: the newest run, the session's trained one.
    experiment=smoke tested the first 2,000 test images; evaluate the same ones."""
    result = run_module(store, "pipelines.evaluate", "--test-subset", "2000")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_evaluate_defaults_to_the_newest_run(evaluated, trained):
    assert evaluated.stdout.startswith(f"evaluated         run {trained.run_id}")


def test_evaluate_records_the_logged_models_accuracy_on_the_run(evaluated, store, trained):
    run = client_of(store).get_run(trained.run_id)
    assert run.data.tags["release.evaluated"] == "true"
    assert run.data.tags["release.eval_test_images"] == "2000"
    # The logged safetensors model scores exactly what training's best checkpoint scored.
    assert run.data.metrics["eval/test_acc"] == pytest.approx(
        run.data.metrics["test/acc"], abs=1e-6
    )


def test_evaluate_again_reuses_the_recorded_result(evaluated, store, trained):
    again = run_module(
        store, "pipelines.evaluate", "--run-id", trained.run_id, "--test-subset", "2000"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith("already evaluated")
    assert len(client_of(store).get_metric_history(trained.run_id, "eval/test_acc")) == 1


# --- register --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(evaluated, store, trained) -> subprocess.CompletedProcess:
    """`pipelines.register` on the evaluated run, which training registered already."""
    result = run_module(store, "pipelines.register", "--run-id", trained.run_id)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_register_a_registered_run_returns_its_version(registered, store, trained):
    assert f"already registered as {MODEL_NAME} version {trained.version}" in registered.stdout
    assert len(client_of(store).search_model_versions(f"name='{MODEL_NAME}'")) == 1


def test_register_records_the_version_on_the_run_and_the_version(registered, store, trained):
    client = client_of(store)
    run = client.get_run(trained.run_id)
    assert run.data.tags["release.registered_version"] == str(trained.version)
    version = client.get_model_version(MODEL_NAME, trained.version)
    assert version.tags["release.registered_model"] == MODEL_NAME
    assert version.tags["release.test_acc_source"] == "eval/test_acc on 2000 test images"


# --- nothing to do, and errors ---------------------------------------------------------------
# In-process (the steps' `run_cli(main, argv)`, as `python -m` calls it) where a fresh
# interpreter adds nothing but seconds; one real process checks that no traceback escapes.


def run_step(module, argv: list[str], workdir: Path, monkeypatch) -> int:
    """A step's command line in this process, in `workdir`, with the default store."""
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as stopped:
        run_cli(module.main, argv)
    return stopped.value.code


def assert_step_error(capsys, *words: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("module", [evaluate, register])
def test_a_step_with_nothing_to_do_says_so_and_exits_zero(tmp_path, monkeypatch, capsys, module):
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # an empty store
    assert run_step(module, [], tmp_path, monkeypatch) == 0
    assert capsys.readouterr().out.startswith("nothing to")


def test_a_step_without_a_store_names_the_fix(tmp_path, monkeypatch, capsys):
    assert run_step(register, [], tmp_path, monkeypatch) == 2
    assert_step_error(capsys, "no MLflow store", "MLFLOW_TRACKING_URI")


@pytest.mark.parametrize(
    ("module", "args", "words"),
    [
        (evaluate, ["--test-subset", "0"], ["--test-subset", "positive"]),
        (evaluate, ["--version", "99"], ["no version 99"]),
        (register, ["--policy", "maybe"], ["--policy", "maybe"]),
        (sweep_report, ["--bogus"], ["--bogus"]),
    ],
)
def test_bad_arguments_give_a_one_line_error(store, monkeypatch, capsys, module, args, words):
    assert run_step(module, args, store, monkeypatch) == 2
    assert_step_error(capsys, *words)


def test_a_step_fails_in_one_line_without_a_traceback(store):
    result = run_module(store, "pipelines.register", "--run-id", "no-such-run")
    assert_one_line_error(result, "no run 'no-such-run'")


def test_train_rejects_a_bad_promotion_policy_before_training(tmp_path, mnist_root):
    result = run_module(tmp_path, "pipelines.train", "registry.promote=sometimes")
    assert_one_line_error(result, "registry.promote", "sometimes")
    assert not (tmp_path / "mlflow.db").exists()  # stopped before any MLflow run began


@pytest.mark.parametrize("module", ["pipelines.train", "pipelines.release"])
def test_a_config_error_is_told_before_torch_or_mlflow_is_imported(tmp_path, module):
    """A typo in an override is answered in about a second, not after 10 s of imports."""
    result = run_module(
        tmp_path, module, "registry.promote=sometimes", env={"PYTHONPROFILEIMPORTTIME": "1"}
    )
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert result.returncode == 2 and "registry.promote" in result.stderr.splitlines()[-1]
    assert "omegaconf" in imported  # the import log was read
    assert {"torch", "mlflow", "pytorch_lightning"} & imported == set()


# --- the Optuna sweep's config, as `make train` reads it ------------------------------------
# The sweep itself (pipelines.sweep) is tests/test_sweep.py and tests/test_sweep_workers.py.


def test_a_sweeps_config_is_a_plain_make_train_config(tmp_path):
    """A trial reruns with `make train ARGS="hparams_search=mnist_optuna <overrides>"`: the
    search config composes for training alone (no Hydra sweeper), trials unregistered."""
    result = run_module(
        tmp_path, "pipelines.train", "hparams_search=mnist_optuna", "--cfg", "job", "--resolve"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = yaml.safe_load(result.stdout)
    assert cfg["registry"]["enabled"] is False
    assert cfg["sweep"]["storage"] == f"sqlite:///{tmp_path}/optuna.db"
    assert "model.layers.conv1.out_channels" in cfg["sweep"]["params"]


# --- multi-node trainer config ---------------------------------------------------------------


def resolved_trainer(tmp_path: Path, env: dict[str, str]) -> dict:
    result = run_module(
        tmp_path, "pipelines.train", "trainer=ddp_multinode", "--cfg", "job", "--resolve", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return yaml.safe_load(result.stdout)["trainer"]


def test_ddp_multinode_takes_the_layout_from_torchrun(tmp_path):
    trainer = resolved_trainer(tmp_path, {"LOCAL_WORLD_SIZE": "4", "GROUP_WORLD_SIZE": "2"})
    assert (trainer["devices"], trainer["num_nodes"], trainer["strategy"]) == (4, 2, "ddp")


def test_ddp_multinode_takes_the_layout_from_slurm(tmp_path):
    trainer = resolved_trainer(tmp_path, {"SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "3"})
    assert (trainer["devices"], trainer["num_nodes"]) == (8, 3)
