"""`make evaluate`: test a run's logged model on the MNIST test set and record the result.

    python -m pipelines.evaluate                     the newest finished run with a model
    python -m pipelines.evaluate --run-id RUN_ID     that run
    python -m pipelines.evaluate --version 3         the run behind registered version 3
    python -m pipelines.evaluate --test-subset 2000  only the first 2,000 test images
    python -m pipelines.evaluate [overrides]         e.g. logger.mlflow.experiment_name=...

Training already tests the best checkpoint; this re-tests what was *logged*, and records
`eval/test_acc` and `release.eval_*` tags on the run (`convlens.evaluation.evaluate_run`). A run
already evaluated on the same images is not evaluated again (pass --force to redo it).
"""

from __future__ import annotations

import argparse

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import Settings, settings
from convlens.store import StepError, latest_run, open_store


def pick_run(client: MlflowClient, run_id: str | None, version: str | None, found: Settings):
    """The run asked for: --run-id, the run of --version, or else the newest one with a model."""
    if run_id:
        return run_id
    if version:
        name = found.model_name
        try:
            registered = client.get_model_version(name, version)
        except MlflowException:
            raise StepError(f"{name} has no version {version} in {client.tracking_uri}") from None
        if not registered.run_id:
            raise StepError(f"{name} v{version} was not registered from a run")
        return registered.run_id
    run = latest_run(client, found.experiment)
    return run.info.run_id if run else None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.evaluate", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run-id", help="the MLflow run to evaluate")
    which.add_argument("--version", help="evaluate the run behind this registered version")
    parser.add_argument(
        "--test-subset", type=positive_int, default=None, help="first N test images only"
    )
    parser.add_argument("--force", action="store_true", help="evaluate again even if recorded")
    add_overrides(parser)
    args = parser.parse_args(argv)

    found = settings(args.overrides)
    client = open_store(found.tracking_uri)
    run_id = pick_run(client, args.run_id, args.version, found)
    if run_id is None:
        print(f"nothing to evaluate: no finished run with a logged model in {found.experiment!r}")
        return 0
    from convlens.evaluation import evaluate_run

    subset = args.test_subset or found.test_subset
    result = evaluate_run(client, run_id, found.data_root, subset, args.force)
    done = "already evaluated" if result.cached else "evaluated"
    print(
        f"{done:<17} run {run_id}: test acc {result.test_acc:.4f} on {result.images:,} test images"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
