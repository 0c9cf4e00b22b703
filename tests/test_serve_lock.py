"""One server per BentoML home: `make serve` refuses to start a second one on a home in use,
because `bentoml serve` empties the home's Prometheus folder, the first server's metrics."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convlens.serve_lock import LOCK_FILE, HomeInUse, hold_home
from tests.conftest import REPO

# A server stand-in: takes the lock as `make serve` does, then execs into a long sleep, as
# `pipelines.serve` execs into `bentoml serve`.
HOLDER = """
import os, sys
from convlens.serve_lock import hold_home
hold_home(sys.argv[1])
sleep = "import sys, time; time.sleep(float(sys.argv[1]))"
os.execv(sys.executable, [sys.executable, "-c", sleep, sys.argv[2]])
"""


def start_holder(home: Path, seconds: float = 60) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), str(seconds)])
    deadline = time.monotonic() + 30
    while not (home / LOCK_FILE).exists() or not (home / LOCK_FILE).read_text():
        assert time.monotonic() < deadline and holder.poll() is None, "the holder did not start"
        time.sleep(0.05)
    return holder


def test_the_lock_is_held_through_the_exec_and_names_the_server(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(HomeInUse, match=f"pid {holder.pid}.*{tmp_path}"):
            hold_home(tmp_path, wait_s=0.5)
    finally:
        holder.kill()
        holder.wait()


def test_the_home_is_free_again_once_the_server_is_gone(tmp_path):
    holder = start_holder(tmp_path)
    holder.kill()
    holder.wait()
    os.close(hold_home(tmp_path, wait_s=0))


def test_a_server_that_is_stopping_is_waited_for(tmp_path):
    holder = start_holder(tmp_path, seconds=1.5)
    try:
        os.close(hold_home(tmp_path, wait_s=30))
    finally:
        holder.kill()
        holder.wait()


def test_make_serve_on_a_home_in_use_is_one_line_naming_the_fix(tmp_path):
    holder = start_holder(tmp_path)
    try:
        env = {**os.environ, "BENTOML_HOME": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.serve", "--model", "convlens-mnist:any"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "already running on the BentoML home" in lines[0]
    assert "BENTOML_HOME=" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
