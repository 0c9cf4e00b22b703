"""`make audit`: pip-audit over the locked dependencies, and never a silent pass.

The audit itself needs PyPI's vulnerability data (CI runs `make audit`); these tests check,
offline, that it audits the whole lock, that an unreachable vulnerability source is reported as
"nothing audited" rather than as a clean result, and that CI runs it before the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.harness import free_port


def make_audit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`make audit` without its `install` prerequisite, through a proxy that refuses every
    connection: the vulnerability source is unreachable, whatever the network allows."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "HTTPS_PROXY": dead, "https_proxy": dead, "NO_PROXY": "", "no_proxy": ""}
    return subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "audit", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_unreachable_vulnerability_source_fails_the_audit_loudly(tmp_path):
    result = make_audit(tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "NOTHING AUDITED" in result.stderr and "unreachable" in result.stderr


def test_ci_may_only_warn_when_the_source_is_unreachable(tmp_path):
    result = make_audit(tmp_path, "AUDIT_UNREACHABLE=warn")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOTHING AUDITED" in result.stderr


def test_the_audit_covers_every_locked_package(tmp_path):
    requirements = tmp_path / "requirements.txt"
    subprocess.run(
        ["uv", "export", "--frozen", "--no-hashes", "--no-emit-project", "--all-groups"]
        + ["--format", "requirements-txt", "--quiet", "-o", str(requirements)],
        cwd=REPO,
        check=True,
        timeout=120,
    )
    pins = re.findall(r"^([A-Za-z0-9._-]+)==", requirements.read_text(), re.M)
    locked = re.findall(r'^name = "([^"]+)"', (REPO / "uv.lock").read_text(), re.M)
    assert len(pins) == len(locked) - 1  # all but the project itself
    assert {"bentoml", "torch", "pillow", "pip-audit", "schemathesis"} <= set(pins)
    dry_run = subprocess.run(
        [str(Path(sys.executable).with_name("pip-audit")), "--dry-run", "--no-deps"]
        + ["--disable-pip", "--progress-spinner", "off", "-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    audited = int(re.search(r"would have audited (\d+) packages", dry_run.stderr).group(1))
    assert audited >= len(pins) - 5  # less only the few for other platforms (win32 etc.)


def test_ci_audits_after_installing_and_before_testing():
    steps = [
        line.split("#")[0].strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.startswith("make ")
    ]
    audit = next(i for i, step in enumerate(steps) if step.startswith("make audit"))
    assert steps.index("make install") < audit < steps.index("make test")
    ignored = (REPO / "audit-ignore.txt").read_text().splitlines()
    for line in ignored:  # every accepted finding says why
        if line.strip() and not line.startswith("#"):
            assert len(line.split(None, 1)) == 2, f"no reason given: {line}"
