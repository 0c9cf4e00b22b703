"""`make ui`: the MLflow UI on the store training writes to, where the run links point.

    python -m pipelines.ui [overrides]     e.g. paths.tracking_uri=sqlite:///other.db

The store is `paths.tracking_uri` and the address `paths.mlflow_ui` (http://127.0.0.1:5000),
the same facts `make train` prints its run link from.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import settings

# MLflow's own defaults serve a team: 4 workers, and a job runner for its GenAI features (LLM
# judges, prompt optimization) that a CNN's runs never use. For one person's browser they
# cost 22 s and 2.5 GB before the first page; one worker (its thread pool answers the page's
# parallel requests) and no job runner: 11 s and 0.5 GB. Either variable, set, wins.
LOCAL_UI_ENV = {"MLFLOW_WORKERS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.ui", description=__doc__.splitlines()[0])
    add_overrides(parser)
    found = settings(parser.parse_args(argv).overrides)
    address = urlsplit(found.mlflow_ui)
    print(f"MLflow UI  {found.mlflow_ui} on {found.tracking_uri}", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", found.tracking_uri]
    command += ["--host", address.hostname or "127.0.0.1", "--port", str(address.port or 5000)]
    for name, value in LOCAL_UI_ENV.items():
        os.environ.setdefault(name, value)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    run_cli(main)
