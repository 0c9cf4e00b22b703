"""Session fixtures for tests against the real service, shared by every module that needs it.

The `trained` champion is packaged by the real `python -m pipelines.package` into a temporary
BentoML home, and `bentoml serve serving.service:ConvLens` runs on it on a free local port
for the whole session. Use them from a test module with

    pytest_plugins = ["tests.serving_fixtures"]

and ask for `served` (the base URL, e.g. http://127.0.0.1:41234), `served_server` (URL, log
file and process id) or `packaged` (the BentoML home and tags). `start_server` runs another,
short-lived one (e.g. on a broken model store), and `worker_rss` reads its workers' memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from convlens.feedback import FEEDBACK_URL_ENV
from tests.conftest import MODEL_NAME, REPO, TrainedStore, once_per_run
from tests.harness import ServerError, ServerProcess, free_port

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
    pid: int = 0  # the `bentoml serve` process; its workers are its children


def worker_pids(server_pid: int) -> list[int]:
    """The worker processes `bentoml serve` started (its children running the service)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server_pid and b"_bentoml_impl.worker.service" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def worker_rss(server: Server) -> int:
    """Resident memory of the server's workers together, in bytes (from /proc)."""
    total = 0
    for pid in worker_pids(server.pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    assert total > 0, f"no worker processes found under {server.pid}"
    return total


def bentoml_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("CONVLENS_MODEL", None)
    env.pop(FEEDBACK_URL_ENV, None)  # never a developer's own feedback store
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
    """The champion imported into a fresh BentoML home and built into a Bento, once per run
    (every worker's servers use it through a home of their own, `own_home`)."""

    def package(home: Path) -> Packaged:
        result = run_package(trained, home)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return Packaged(
            bentoml_home=home,
            model_tag=latest(home, "models", MODEL_NAME),
            bento_tag=latest(home, "bentos", BENTO_NAME),
            output=result.stdout,
        )

    return once_per_run(tmp_path_factory, "bentoml", Packaged, package)


def fail_on(error: ServerError) -> None:
    """A server that does not come up fails the fixture as a test failure, with its log."""
    pytest.fail(str(error))


def own_home(home: Path) -> Path:
    """A BentoML home of its own sharing `home`'s models and Bentos: `bentoml serve` empties
    its home's Prometheus folder when it starts, which would wipe the /metrics series of a
    server already running on `home` (the session's `served`)."""
    own = Path(tempfile.mkdtemp(prefix="bentoml-home-", dir=home.parent))
    for name in ("models", "bentos"):
        if (home / name).exists():
            (own / name).symlink_to(home / name)
    return own


def start_server(home: Path, log: Path, **env: str) -> tuple[ServerProcess, Server]:
    """`bentoml serve` (one worker) on the BentoML home `home`, on a free local port; not
    waited for: pair with `wait_until_ready` or `wait_until_answering`, and `stop`."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    process = ServerProcess(
        command,
        log=log,
        ready_url=f"{url}/readyz",
        env=bentoml_env(own_home(home), CONVLENS_WORKERS="1", **env),
        cwd=REPO,
        timeout_s=READY_TIMEOUT_S,
        name="bentoml serve",
    ).start()
    return process, Server(url, log, process.pid)


def wait_until_ready(process: ServerProcess) -> None:
    """Until `/readyz` answers 200: the model is loaded and requests will be served."""
    try:
        process.wait_ready()
    except ServerError as error:
        fail_on(error)


def wait_until_answering(server: Server, process: ServerProcess) -> None:
    """Until `/livez` answers: the workers are up, ready to serve or not."""
    try:
        process.wait_ready(f"{server.url}/livez")
    except ServerError as error:
        fail_on(error)


def stop(process: ServerProcess) -> None:
    """SIGTERM lets BentoML's process manager stop its workers; SIGKILL only if it hangs."""
    process.stop()


@pytest.fixture(scope="session")
def served_feedback_url(tmp_path_factory) -> str:
    """The SQLite file the served service keeps POST /feedback in."""
    return f"sqlite:///{tmp_path_factory.mktemp('feedback') / 'feedback.db'}"


@pytest.fixture(scope="session")
def served_server(
    packaged: Packaged, served_feedback_url: str, tmp_path_factory
) -> Iterator[Server]:
    """`bentoml serve` on the packaged model (one worker), stopped at the end of the session."""
    log = tmp_path_factory.mktemp("serve") / "bentoml-serve.log"
    env = {"CONVLENS_MODEL": packaged.model_tag, FEEDBACK_URL_ENV: served_feedback_url}
    process, server = start_server(packaged.bentoml_home, log, **env)
    try:
        wait_until_ready(process)
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def served(served_server: Server) -> str:
    """Base URL of the running service."""
    return served_server.url


SERVED_URL_ENV = "CONVLENS_SERVED_URL"


@pytest.fixture(scope="session")
def served_url(request: pytest.FixtureRequest) -> str:
    """The base URL the browser tests open: the session's server, or a running `make serve`
    named by CONVLENS_SERVED_URL, to take the README's screenshots from a fully trained
    champion (the session trains a smoke model)."""
    return os.environ.get(SERVED_URL_ENV) or request.getfixturevalue("served")
