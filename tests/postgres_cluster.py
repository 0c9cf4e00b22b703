"""A throwaway PostgreSQL cluster that tests can stop and start again: a database going down
and coming back, for real (initdb + pg_ctl in a temp folder, on a free loopback port).

A plugin for the modules that need one: `pytest_plugins = ["tests.postgres_cluster"]` gives
them the module-scoped `cluster` fixture. (PYTEST_DONT_REWRITE: they also import names from
here before pytest loads it as a plugin, too late to rewrite asserts it does not need.)"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.harness import free_port

USER, PASSWORD = "convlens", "test-only-password"


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts[-3])
    return versions[-1].parent if versions else None


class PostgresCluster:
    """initdb'd once; `start` and `stop` (immediate: to its clients, an outage) at will, on
    the same port, so URLs handed out stay valid across an outage."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            message = "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.bindir = bindir
        # In /tmp, not pytest's per-user temp dir: the cluster's owner must be able to reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="convlens-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs a `postgres` user to own the test cluster")
            shutil.chown(self.folder, "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        password = self.folder / "password"
        password.write_text(PASSWORD)
        if self.as_owner:
            shutil.chown(password, "postgres")
        self._pg(
            "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def _pg(self, tool: str, *args: str) -> None:
        command = [*self.as_owner, str(self.bindir / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresCluster:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        log = str(self.folder / "postgres.log")
        self._pg(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "60", "start"
        )
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URL (psycopg2: what the project installs)."""
        admin = self.connect("postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        admin.close()
        return f"postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def connect(self, database: str):
        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=database
        )

    def query(self, database: str, sql: str, *params) -> list[tuple]:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A running cluster for the test module, removed after it."""
    running = PostgresCluster().start()
    try:
        yield running
    finally:
        running.remove()
