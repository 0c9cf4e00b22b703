"""Shared fixtures: the real MNIST files and one small model trained through the real CLI."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

from tests.harness import mnist_dir

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "convlens-mnist"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs two workers), each worker and every process it
    starts get their share of the cores. Torch's default, one thread per core, taken by every
    worker at once, leaves threads spinning for a core they do not get."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = mnist_dir()
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.fail(
            f"MNIST not found in {root}/MNIST/raw: set CONVLENS_DATA_DIR to the folder holding "
            "MNIST/raw/ (or run `make train` once with internet access to download it)"
        )
    return root


def train_env(env: dict | None = None) -> dict:
    """The environment of a training subprocess: this repo, the MNIST files, the local store."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CONVLENS_DATA_DIR": str(mnist_dir()),
        "PYTHONUNBUFFERED": "1",
    }
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return {**full_env, **(env or {})}


@functools.cache
def _migrated_store() -> Path:
    """An empty MLflow sqlite store, made by MLflow once per test session."""
    from mlflow import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="convlens-empty-store-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def with_store(workdir: Path) -> Path:
    """`workdir` with an empty MLflow store as its mlflow.db, unless it has one already.

    Creating a sqlite store runs MLflow's ~50 schema migrations (5-8 s on 2 busy cores), once
    per store; a copy of one made once per session saves that in every test that trains into
    a store of its own. The `trained` fixture's run still creates its store as a user's first
    `make train` does."""
    target = Path(workdir) / "mlflow.db"
    if not target.exists():
        shutil.copyfile(_migrated_store(), target)
    return Path(workdir)


def run_train(workdir: Path, *overrides: str, env: dict | None = None, timeout: float = 600):
    """Run `python -m pipelines.train` in `workdir`, where its store and outputs land."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.train", *overrides],
        cwd=workdir,
        env=train_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_train(workdir: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    """Start training in the background, its output in `workdir/train.log`, to interrupt it."""
    log = open(workdir / "train.log", "w")  # noqa: SIM115 - the process outlives this call
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", *overrides],
        cwd=workdir,
        env=train_env(env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


Built = TypeVar("Built")


def once_per_run(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    kind: type[Built],
    build: Callable[[Path], Built],
) -> Built:
    """`build(folder)` once per test run, however many pytest-xdist workers ask for it.

    The first worker builds it in a folder all workers share, under a lock; the others wait,
    then read what it returned (a dataclass of paths and JSON values, kept as JSON beside it).
    Without xdist it is an ordinary session fixture's body."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    record = shared / f"{name}.json"
    paths = {f.name for f in dataclasses.fields(kind) if f.type in ("Path", Path)}
    with FileLock(shared / f"{name}.lock"):
        if not record.exists():
            folder = shared / name
            folder.mkdir()
            built = build(folder)
            fields = {
                k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(built).items()
            }
            record.write_text(json.dumps(fields))
    fields = json.loads(record.read_text())
    return kind(**{k: Path(v) if k in paths else v for k, v in fields.items()})


@dataclass(frozen=True)
class TrainedStore:
    workdir: Path
    tracking_uri: str
    run_id: str
    version: str


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_root) -> TrainedStore:
    """One short real training run into a temp sqlite store, registered as champion; one for
    the whole run, which every worker reads."""
    from mlflow import MlflowClient

    def train(workdir: Path) -> TrainedStore:
        result = run_train(workdir, "experiment=smoke")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        uri = f"sqlite:///{workdir}/mlflow.db"
        version = MlflowClient(uri).get_model_version_by_alias(MODEL_NAME, "champion")
        return TrainedStore(workdir, uri, version.run_id, version.version)

    return once_per_run(tmp_path_factory, "trained", TrainedStore, train)
