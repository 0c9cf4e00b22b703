"""`python -m pipelines.release`: train, evaluate, register, promote if better, package.

One real release into a fresh sqlite store and BentoML home, then a second one that does not
beat the champion and so must not build a Bento.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import MODEL_NAME
from tests.test_pipelines import assert_one_line_error, run_module

RUN_LINE = re.compile(r"^\[1/5\] train +run ([0-9a-f]{32}):", re.MULTILINE)


@dataclass(frozen=True)
class Release:
    workdir: Path
    stdout: str
    run_id: str
    client: MlflowClient


def release(workdir: Path, *overrides: str) -> Release:
    result = run_module(workdir, "pipelines.release", "experiment=smoke", *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = RUN_LINE.search(result.stdout).group(1)
    return Release(workdir, result.stdout, run_id, MlflowClient(f"sqlite:///{workdir}/mlflow.db"))


@pytest.fixture(scope="module")
def first(tmp_path_factory, mnist_root) -> Release:
    return release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def second(first) -> Release:
    """The same training again: same seed, same accuracy, so it does not beat the champion."""
    return release(first.workdir)


def bentos(workdir: Path) -> set[str]:
    folder = workdir / "bentoml" / "bentos" / "convlens"
    return {p.name for p in folder.iterdir() if p.name != "latest"} if folder.exists() else set()


def test_release_runs_the_five_steps_in_order(first):
    steps = re.findall(r"^\[(\d)/5\] (\w+)", first.stdout, re.MULTILINE)
    assert steps == [
        ("1", "train"),
        ("2", "evaluate"),
        ("3", "register"),
        ("4", "promote"),
        ("5", "package"),
    ]


def test_release_evaluates_the_logged_model_and_records_it(first):
    run = first.client.get_run(first.run_id)
    assert run.data.tags["release.evaluated"] == "true"
    assert run.data.tags["release.eval_test_images"] == "2000"  # experiment=smoke's test subset
    assert float(run.data.tags["release.eval_test_acc"]) == pytest.approx(
        run.data.metrics["test/acc"], abs=1e-6
    )


def test_first_release_becomes_the_champion(first):
    champion = first.client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.run_id == first.run_id
    assert champion.tags["release.registered_version"] == str(champion.version)
    assert champion.tags["release.promoted"] == "true"


def test_release_packages_the_champion_into_a_bento(first):
    champion = first.client.get_model_version_by_alias(MODEL_NAME, "champion")
    bento = champion.tags["release.bento"]
    assert bento.split(":")[1] in bentos(first.workdir)
    name, version = champion.tags["release.bentoml_model"].split(":")
    weights = first.workdir / "bentoml" / "models" / name / version / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == champion.tags["weights_sha256"]


def test_release_that_is_not_better_builds_no_bento(first, second):
    assert "champion unchanged" in second.stdout
    assert "[5/5] package   nothing to do" in second.stdout
    assert len(bentos(second.workdir)) == 1
    version = second.client.search_model_versions(f"run_id='{second.run_id}'")[0]
    assert version.tags["release.promoted"] == "false"
    assert "release.bento" not in version.tags


def test_release_rejects_a_bad_policy_before_training(tmp_path):
    result = run_module(tmp_path, "pipelines.release", "registry.promote=sometimes")
    assert_one_line_error(result, "registry.promote")
    assert not (tmp_path / "mlflow.db").exists()


def test_release_with_an_unknown_override_names_it_without_a_traceback(tmp_path):
    result = run_module(tmp_path, "pipelines.release", "no_such_key=1")
    assert result.returncode != 0
    assert "no_such_key" in result.stderr
    assert "Traceback" not in result.stderr
