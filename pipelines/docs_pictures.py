"""Copy a training run's movies and top-patch grids into docs/, for the README.

    python -m pipelines.docs_pictures                  the newest finished run with a model
    python -m pipelines.docs_pictures --run-id RUN_ID  that run
    python -m pipelines.docs_pictures --out docs       where to put them (docs/ by default)

The GIFs are the run's `movies/` (the conv1 filters and one digit's conv1 feature maps, one
frame per epoch) and the PNGs its `evaluation/top_patches_<layer>.png`; rerun after training to
refresh them.
"""

from __future__ import annotations

from pathlib import Path

from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import REPO, settings
from convlens.movies import copy_run_pictures
from convlens.store import StepError, latest_run, open_store


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.docs_pictures", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="the MLflow run to copy from")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="the folder to write")
    add_overrides(parser)
    args = parser.parse_args(argv)

    found = settings(args.overrides)
    client = open_store(found.tracking_uri)
    run_id = args.run_id
    if run_id is None:
        run = latest_run(client, found.experiment)
        if run is None:
            raise StepError(f"no finished run with a model in {found.experiment!r}: train first")
        run_id = run.info.run_id
    copied = copy_run_pictures(client, run_id, args.out)
    if not copied:
        raise StepError(f"run {run_id} logged no movies or top patches (trained before them?)")
    for path in copied:
        print(f"copied {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
