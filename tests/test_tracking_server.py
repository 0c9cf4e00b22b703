"""Everything through a real tracking server: `mlflow server` with a PostgreSQL backend store and
proxied artifacts, and a release (train, evaluate, register, promote, package) against it.

PostgreSQL is a throwaway cluster (`tests/postgres_cluster.py`) on a free port. Without
the binaries the tests are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import MODEL_NAME
from tests.mlflow_server import MlflowServer
from tests.postgres_cluster import PostgresCluster
from tests.test_pipelines import run_module

pytest_plugins = ["tests.postgres_cluster"]  # the `cluster` fixture

PG_DB = "mlflow"
RUN_LINE = re.compile(r"^\[1/5\] train +run ([0-9a-f]{32}):", re.MULTILINE)


@dataclass(frozen=True)
class Postgres:
    """The module's cluster and the `mlflow` database the tracking server stores in."""

    cluster: PostgresCluster
    uri: str  # SQLAlchemy URI; SQLAlchemy 2.1's default postgresql driver is psycopg 3, not ours

    def query(self, sql: str, *params) -> list[tuple]:
        return self.cluster.query(PG_DB, sql, *params)


@pytest.fixture(scope="module")
def postgres(cluster) -> Postgres:
    return Postgres(cluster, cluster.create_database(PG_DB))


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """`mlflow server` on Postgres, artifacts proxied to a folder (--artifacts-destination)."""
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), backend_uri=postgres.uri)
    running.start(timeout_s=300)  # the first start migrates an empty database
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Released:
    workdir: Path
    stdout: str
    run_id: str
    client: MlflowClient


@pytest.fixture(scope="module")
def released(server, tmp_path_factory, mnist_root) -> Released:
    """A whole release against the server. The client gets only the server's URL: no database
    or storage credentials, no shared folder."""
    workdir = tmp_path_factory.mktemp("release-via-server")
    result = run_module(
        workdir,
        "pipelines.release",
        "experiment=smoke",
        env={"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"},
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = RUN_LINE.search(result.stdout).group(1)
    return Released(workdir, result.stdout, run_id, MlflowClient(server.uri))


def test_release_through_the_server_runs_every_step(released):
    assert "[5/5] package   model" in released.stdout
    assert not (released.workdir / "mlflow.db").exists()  # nothing fell back to a local store


def test_the_run_is_stored_in_postgres(released, postgres):
    rows = postgres.query("SELECT status FROM runs WHERE run_uuid = %s", released.run_id)
    assert rows == [("FINISHED",)]


def test_artifacts_are_proxied_by_the_server(released, server):
    experiment = released.client.get_experiment(
        released.client.get_run(released.run_id).info.experiment_id
    )
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    stored = server.folder / "artifacts"
    assert list(stored.rglob("evaluation/confusion_matrix.png"))
    assert list(stored.rglob("images/filters~conv1*"))
    assert list(stored.rglob("extra_files/model.safetensors"))


def test_the_champion_is_registered_through_the_server(released, postgres):
    champion = released.client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.run_id == released.run_id
    assert champion.tags["release.registered_version"] == str(champion.version)
    aliases = postgres.query("SELECT alias, version FROM registered_model_aliases")
    assert aliases == [("champion", int(champion.version))]


def test_evaluation_read_the_model_through_the_server(released):
    run = released.client.get_run(released.run_id)
    assert run.data.tags["release.evaluated"] == "true"
    assert run.data.metrics["eval/test_acc"] == pytest.approx(
        run.data.metrics["test/acc"], abs=1e-6
    )


def test_the_packaged_model_holds_the_registered_weights(released):
    champion = released.client.get_model_version_by_alias(MODEL_NAME, "champion")
    name, version = champion.tags["release.bentoml_model"].split(":")
    weights = released.workdir / "bentoml" / "models" / name / version / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == champion.tags["weights_sha256"]
    bento = champion.tags["release.bento"].split(":")[1]
    assert (released.workdir / "bentoml" / "bentos" / "convlens" / bento / "bento.yaml").exists()
