"""The one harness that tests and benchmarks share: local ports, server processes, digit PNGs.

Plain functions and a class, no pytest: `tests/serving_fixtures.py` and `tests/mlflow_server.py`
build their fixtures on it, and `benchmarks/` imports it as `tests.harness` (the repository
root is on the path of every benchmark). Heavy libraries (httpx, numpy, Pillow) are imported
where they are used, so importing this module costs nothing a benchmark would notice.

    from tests.harness import ServerProcess, digit_png, free_port

    port = free_port()
    with ServerProcess(["mlflow", "ui", "--port", str(port)], log=tmp / "ui.log",
                       ready_url=f"http://127.0.0.1:{port}/health") as server:
        ...  # answering here; stopped (its whole process group) on the way out
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
LOG_TAIL_CHARS = 4000


# ------------------------------------------------------------------ ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it (bind to port 0) and the socket is closed at once, so another process
    could take it before the caller does; the kernel hands out ephemeral ports in turn, which
    makes that rare enough for tests. Also useful as a port where nothing answers (a dead
    proxy, an unreachable tracking server)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ server processes


class ServerError(RuntimeError):
    """A server exited, or did not answer in time; the message ends with its log's tail."""


def log_tail(log: Path | None, chars: int = LOG_TAIL_CHARS) -> str:
    """The end of a log file, for error messages (empty if there is none yet)."""
    try:
        return Path(log).read_text(errors="replace")[-chars:] if log else ""
    except OSError:
        return ""


def wait_for_http(
    url: str,
    timeout_s: float,
    *,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
    name: str = "server",
    interval_s: float = 0.5,
) -> float:
    """Poll `GET url` until it answers 200; returns the seconds waited.

    Connection errors and other statuses mean "not yet" (a server binds its port before its
    workers are ready). Gives up with `ServerError` after `timeout_s`, or at once when
    `process` has exited: a crashed server never answers, and its log says why."""
    import httpx

    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise ServerError(f"{name} exited with {process.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise ServerError(f"{name}: no 200 from {url} after {timeout_s:g}s:\n{log_tail(log)}")
        time.sleep(interval_s)


class ServerProcess:
    """A server command in its own session (process group), its output in a log file.

    Servers start children (BentoML's arbiter and workers, make's recipe, gunicorn's workers):
    a session of their own lets `stop` signal them all together, and keeps a Ctrl-C in the
    terminal from reaching them before the harness stops them in order.

    As a context manager it starts, waits for `ready_url` (when given) and always stops;
    `start`, `wait_ready` and `stop` are there for servers that must stop and come back."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log: Path,
        ready_url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = 180.0,
        name: str | None = None,
        append_log: bool = False,
    ):
        self.command = [str(part) for part in command]
        self.log = Path(log)
        self.ready_url = ready_url
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.timeout_s = timeout_s
        self.name = name or Path(self.command[0]).name
        self.append_log = append_log
        self.process: subprocess.Popen | None = None
        self.started: float | None = None  # time.monotonic() at start
        self.ready_s: float | None = None  # from start until ready_url answered

    @property
    def pid(self) -> int:
        """The leader's process id (also the process group's)."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ServerProcess:
        """Start the command; does not wait for it (see `wait_ready`)."""
        assert not self.running, f"{self.name} is already running"
        self.ready_s = None
        self.started = time.monotonic()
        with self.log.open("a" if self.append_log else "w") as out:  # the child keeps its own
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, url: str | None = None, timeout_s: float | None = None) -> float:
        """Wait until `url` (default: `ready_url`) answers 200; `ServerError` if the server
        exits first or the timeout passes. Returns, and records as `ready_s`, the seconds
        since start."""
        url = url or self.ready_url
        assert url, f"no readiness URL for {self.name}"
        assert self.process is not None and self.started is not None, f"{self.name} not started"
        wait_for_http(
            url,
            self.timeout_s if timeout_s is None else timeout_s,
            process=self.process,
            log=self.log,
            name=self.name,
        )
        self.ready_s = time.monotonic() - self.started
        return self.ready_s

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the whole process group, so servers stop their workers as in production;
        SIGKILL if it is not gone after `grace_s` (0: SIGKILL at once, i.e. a crash).

        When the leader has already exited, whatever it left in its group is killed."""
        process = self.process
        if process is None:
            return
        if process.poll() is not None:
            signal_group(process.pid, signal.SIGKILL)  # orphaned workers, if any
            return
        if grace_s > 0:
            signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                pass
        signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def log_text(self) -> str:
        return log_tail(self.log)

    def __enter__(self) -> ServerProcess:
        if not self.running:
            self.start()
        try:
            if self.ready_url:
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def signal_group(pgid: int, sig: int) -> None:
    """`killpg`, quiet when the group has gone meanwhile."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


# ------------------------------------------------------------------ MNIST digits


def mnist_dir() -> Path:
    """The folder holding MNIST/raw/: $CONVLENS_DATA_DIR, else the repo's data/."""
    return Path(os.environ.get("CONVLENS_DATA_DIR", REPO / "data")).resolve()


@functools.lru_cache(maxsize=2)
def _test_set(root: Path):
    import numpy as np

    raw = root / "MNIST" / "raw"
    images = np.fromfile(raw / "t10k-images-idx3-ubyte", dtype=np.uint8, offset=16)
    labels = np.fromfile(raw / "t10k-labels-idx1-ubyte", dtype=np.uint8, offset=8)
    images = images.reshape(-1, 28, 28)
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller
    return images, labels


def mnist_test_set(data_dir: Path | str | None = None):
    """The official 10k test images (uint8, N x 28 x 28) and labels, read straight from the
    idx files (no torchvision, no download), once per folder. Read-only arrays: copy to
    change them."""
    return _test_set(Path(data_dir).resolve() if data_dir else mnist_dir())


def png_bytes(image) -> bytes:
    """A uint8 gray image (H x W array) as PNG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def _digit_png(index: int, root: Path) -> bytes:
    return png_bytes(_test_set(root)[0][index])


def digit_png(index: int = 0, data_dir: Path | str | None = None) -> bytes:
    """MNIST test image `index` (0 is a 7) as a 28x28 gray PNG: a real digit, which the
    served model classifies as a trained one would, unlike a drawn stroke."""
    return _digit_png(index, Path(data_dir).resolve() if data_dir else mnist_dir())
