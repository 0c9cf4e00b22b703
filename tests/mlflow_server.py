"""A real `mlflow server` on a free loopback port, which tests can stop and bring back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipelines.ui import LOCAL_UI_ENV
from tests.harness import ServerProcess, free_port


class MlflowServer:
    """`mlflow server` with a sqlite backend and proxied artifacts under `folder`.

    It keeps its port across `stop` and `start`, so that clients configured with `uri` find
    it again when it comes back; its log (`folder/server.log`) accumulates every start."""

    def __init__(self, folder: Path, backend_uri: str | None = None, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.backend_uri = backend_uri or f"sqlite:///{self.folder}/server.db"
        self.server: ServerProcess | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> MlflowServer:
        mlflow = Path(sys.executable).parent / "mlflow"
        self.server = ServerProcess(
            [
                mlflow,
                "server",
                "--backend-store-uri",
                self.backend_uri,
                "--artifacts-destination",
                self.folder / "artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],  # fmt: skip
            log=self.folder / "server.log",
            append_log=True,
            ready_url=f"{self.uri}/health",
            env={**os.environ, **LOCAL_UI_ENV},  # one worker, no GenAI job runner
            timeout_s=timeout_s,
            name="mlflow server",
        )
        self.server.__enter__()  # started and answering, or stopped and raising ServerError
        return self

    def stop(self) -> None:
        """Killed (SIGKILL to its process group), not shut down: to its clients, an outage."""
        if self.server is not None:
            self.server.stop(grace_s=0)
        self.server = None
