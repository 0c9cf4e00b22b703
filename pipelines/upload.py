"""Send what a run could not log, once its tracking server is back.

    python -m pipelines.upload outputs/<date>/<time>/mlflow-outbox

Training leaves that folder when the MLflow server stopped answering for good: buffered
metrics and images, and a manifest pointing at the run's evaluation and model files. This step
writes them into the same run, logs the model, then registers and promotes it as training would
have. Run it again after a partial upload: it sends only what is still waiting.
"""

from __future__ import annotations

from pathlib import Path

from convlens.cli import Parser, run_cli
from convlens.upload import upload


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.upload", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run's mlflow-outbox folder")
    args = parser.parse_args(argv)
    print(upload(args.folder))
    return 0


if __name__ == "__main__":
    run_cli(main)
