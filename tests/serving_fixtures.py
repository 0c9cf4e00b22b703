"""Session fixtures for tests against the real service, shared by every module that needs it.

The `trained` champion is packaged by the real `python -m pipelines.package` into a temporary
BentoML home, and `bentoml serve serving.service:ConvLens` runs on it on a free local port
for the whole session. Use them from a test module with

    pytest_plugins = ["tests.serving_fixtures"]

and ask for `served` (the base URL, e.g. http://127.0.0.1:41234), `served_server` (URL and
log file) or `packaged` (the BentoML home and tags).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import MODEL_NAME, REPO, TrainedStore

BENTO_NAME = "convlens"
SERVICE = "serving.service:ConvLens"
READY_TIMEOUT_S = 180


@dataclass(frozen=True)
class Packaged:
    bentoml_home: Path
    model_tag: str
    bento_tag: str
    output: str

    @property
    def model_dir(self) -> Path:
        name, version = self.model_tag.split(":")
        return self.bentoml_home / "models" / name / version

    @property
    def bento_dir(self) -> Path:
        name, version = self.bento_tag.split(":")
        return self.bentoml_home / "bentos" / name / version

    @property
    def model_labels(self) -> dict[str, str]:
        return yaml.safe_load((self.model_dir / "model.yaml").read_text())["labels"]


@dataclass(frozen=True)
class Server:
    url: str
    log: Path


def bentoml_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("CONVLENS_MODEL", None)
    env.update(extra)
    return env


def run_package(
    trained: TrainedStore, home: Path, *args: str, tracking_uri: str | None = None
) -> subprocess.CompletedProcess:
    """`python -m pipelines.package` against the trained store, into the BentoML home `home`."""
    env = bentoml_env(home, MLFLOW_TRACKING_URI=tracking_uri or trained.tracking_uri)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.package", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def latest(home: Path, kind: str, name: str) -> str:
    """The tag BentoML's store marks as latest (its `latest` file holds the version)."""
    return f"{name}:{(home / kind / name / 'latest').read_text().strip()}"


@pytest.fixture(scope="session")
def packaged(trained: TrainedStore, tmp_path_factory) -> Packaged:
    """The champion imported into a fresh BentoML home and built into a Bento, once."""
    home = tmp_path_factory.mktemp("bentoml")
    result = run_package(trained, home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Packaged(
        bentoml_home=home,
        model_tag=latest(home, "models", MODEL_NAME),
        bento_tag=latest(home, "bentos", BENTO_NAME),
        output=result.stdout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"bentoml serve exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"bentoml serve not ready after {READY_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM lets BentoML's process manager stop its workers; SIGKILL only if it hangs."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def served_server(packaged: Packaged, tmp_path_factory) -> Iterator[Server]:
    """`bentoml serve` on the packaged model (one worker), stopped at the end of the session."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "bentoml-serve.log"
    env = bentoml_env(
        packaged.bentoml_home, CONVLENS_MODEL=packaged.model_tag, CONVLENS_WORKERS="1"
    )
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_ready(url, process, log)
        yield Server(url, log)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def served(served_server: Server) -> str:
    """Base URL of the running service."""
    return served_server.url


@pytest.fixture(scope="session")
def served_url(served: str) -> str:
    """The same base URL, under the name the browser tests use."""
    return served
