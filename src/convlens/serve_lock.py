"""One server per BentoML home.

`bentoml serve` empties the home's Prometheus folder (`prometheus_multiproc_dir`) as it
starts, and the metrics of a server already running on that home live there: a second server
would leave the first one's `/metrics` broken. So `make serve` takes a lock on the home first
and keeps it for as long as the server runs (the lock's file descriptor stays open through the
exec into `bentoml serve`; the kernel releases it when the server exits, however it exits).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from convlens import UserError

LOCK_FILE = "serve.lock"  # in the BentoML home
STOPPING_S = 10.0  # how long a server that is stopping (its workers exiting) is waited for


class HomeInUse(UserError):
    """Another server holds the BentoML home."""


def hold_home(home: str | Path, wait_s: float = STOPPING_S) -> int:
    """Lock `home` for this process and what it execs into; the lock's descriptor.

    Waits up to `wait_s` for a server that is stopping (Ctrl-C, then `make serve` again)."""
    path = Path(home) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while not _locked(fd):
        if time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        holder = path.read_text().strip() or "unknown"
        os.close(fd)
        raise HomeInUse(
            f"a server (pid {holder}) is already running on the BentoML home {home}, and a "
            "second one would empty its metrics folder: stop that one, or serve from another "
            "home (BENTOML_HOME=/another/folder make serve)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    os.set_inheritable(fd, True)
    return fd


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
