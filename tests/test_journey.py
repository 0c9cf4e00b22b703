"""The seams a user crosses: a release under their own names, the steps run after it with the
same overrides, and `make serve` serving `@champion` as it is now, not as it was.

One release into a fresh store (registry and experiment renamed), then `make serve`, a second
training promoted with `registry.promote=always`, and `make serve` again.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import REPO
from tests.harness import HOST, ServerProcess, free_port
from tests.test_pipelines import run_module

NAME = "digits-journey"
EXPERIMENT = "journey-experiment"
NAMES = (f"registry.name={NAME}", f"logger.mlflow.experiment_name={EXPERIMENT}")
SMALL = "experiment=smoke"


@dataclass(frozen=True)
class Store:
    workdir: Path
    release: subprocess.CompletedProcess

    @property
    def client(self) -> MlflowClient:
        uri = f"sqlite:///{self.workdir}/mlflow.db"
        return MlflowClient(uri, registry_uri=uri)

    @property
    def overrides(self) -> tuple[str, ...]:
        """What a user passes to every step to work on this store under these names."""
        return (
            SMALL,
            *NAMES,
            f"paths.tracking_uri=sqlite:///{self.workdir}/mlflow.db",
            f"paths.bentoml_home={self.workdir}/bentoml",
        )

    def step(self, module: str, *args: str) -> subprocess.CompletedProcess:
        result = run_module(self.workdir, module, *args, *self.overrides)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result


@pytest.fixture(scope="module")
def store(tmp_path_factory, mnist_root) -> Store:
    workdir = tmp_path_factory.mktemp("journey")
    result = run_module(workdir, "pipelines.release", SMALL, *NAMES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Store(workdir, result)


def the_run_id(store: Store) -> str:
    return re.search(r"^\[1/5\] train +run ([0-9a-f]{32})", store.release.stdout, re.M).group(1)


def test_release_registers_under_the_overridden_names(store):
    client = store.client
    run = client.get_run(the_run_id(store))
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == run.info.run_id
    assert f"[3/5] register  {NAME} version 1" in store.release.stdout


def test_release_evaluates_and_packages_under_the_overridden_names(store):
    tags = store.client.get_run(the_run_id(store)).data.tags
    assert tags["release.evaluated"] == "true"
    assert tags["release.registered_model"] == NAME
    assert tags["release.bentoml_model"].startswith(f"{NAME}:v1-")
    assert (store.workdir / "bentoml" / "models" / NAME).is_dir()


@pytest.mark.parametrize(
    ("module", "args", "says"),
    [
        ("pipelines.evaluate", (), "already evaluated"),
        ("pipelines.register", (), f"already registered as {NAME} version 1"),
        ("pipelines.package", ("--no-build",), f"{NAME}:v1-"),
        ("pipelines.sweep_report", (), f"in experiment {EXPERIMENT!r}"),
    ],
)
def test_each_step_run_alone_sees_the_same_overrides(store, module, args, says):
    assert says in store.step(module, *args).stdout


@dataclass(frozen=True)
class Served:
    output: str
    info: dict


def make_serve(store: Store, log: Path) -> Served:
    """`make serve` on this store, as a user runs it: what it said and served, then stopped."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")}
    env.pop("CONVLENS_MODEL", None)
    command = [
        "make",
        "-s",
        "serve",
        f"HOST={HOST}",
        f"PORT={port}",
        f"ARGS={' '.join(store.overrides)}",
    ]
    url = f"http://{HOST}:{port}"
    with ServerProcess(
        command, log=log, cwd=REPO, env=env, ready_url=f"{url}/readyz", timeout_s=300
    ):
        info = httpx.post(f"{url}/model_info", json={}, timeout=30).json()
    return Served(log.read_text(), info)


@pytest.fixture(scope="module")
def first_serve(store) -> Served:
    return make_serve(store, store.workdir / "serve-1.log")


@pytest.fixture(scope="module")
def second_serve(store, first_serve) -> Served:
    """Train again, promoted whatever its accuracy, then `make serve` once more."""
    trained = store.step("pipelines.train", "registry.promote=always")
    assert f"registered {NAME} version 2: now champion" in trained.stdout
    return make_serve(store, store.workdir / "serve-2.log")


def test_make_serve_says_which_version_it_serves(first_serve):
    assert re.search(rf"^serving +{NAME} v1 \(@champion", first_serve.output, re.M)


def test_make_serve_serves_the_champion(first_serve):
    assert (first_serve.info["name"], first_serve.info["version"]) == (NAME, "1")


def test_make_serve_after_a_new_champion_serves_the_new_one(second_serve):
    assert (second_serve.info["name"], second_serve.info["version"]) == (NAME, "2")
    assert re.search(rf"^serving +{NAME} v2 \(@champion.*imported now", second_serve.output, re.M)
