"""What the release steps share: the MLflow store, names from the configs, run lookup, CLI errors.

Every step records what it did as `release.*` tags on the MLflow run and, once registered, on
the model version, so a step that finds its work done says so instead of doing it again.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import LoggedModel, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from convlens import UserError
from convlens.reachability import check_reachable

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TAG = "release."  # prefix of every tag the release steps write
SWEEP_ID = "sweep.id"  # the tag every trial of one multirun shares (pipelines.train)


class StepError(UserError):
    """A step cannot run as asked; the message says what to fix."""


def registry_name() -> str:
    return str(OmegaConf.load(CONF / "registry" / "default.yaml").name)


def registry_policy() -> str:
    return str(OmegaConf.load(CONF / "registry" / "default.yaml").promote)


def experiment_name() -> str:
    return str(OmegaConf.load(CONF / "logger" / "mlflow.yaml").mlflow.experiment_name)


def default_tracking_uri() -> str:
    """As for training: MLFLOW_TRACKING_URI, else `mlflow.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def open_store(uri: str) -> MlflowClient:
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise StepError(
            f"no MLflow store at {uri}: train first (make train) or set MLFLOW_TRACKING_URI"
        )
    check_reachable(uri)  # a tracking server that does not answer: an error in seconds
    return MlflowClient(uri)


def get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise StepError(f"no run {run_id!r} in {client.tracking_uri}") from None
        raise


def logged_model(client: MlflowClient, run: Run) -> LoggedModel | None:
    """The model `convlens.tracking.log_model` logged for the run, if it got that far."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'",
    )
    return models[0] if models else None


def latest_run(client: MlflowClient, experiment: str) -> Run | None:
    """The newest finished run of the experiment that logged a model."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    return next((run for run in runs if logged_model(client, run) is not None), None)


def version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return versions[0] if versions else None


def record(
    client: MlflowClient,
    tags: dict[str, str],
    run_id: str | None = None,
    version: ModelVersion | None = None,
) -> None:
    """Set `release.<key>` tags on the run and/or the model version."""
    for key, value in tags.items():
        if run_id:
            client.set_tag(run_id, TAG + key, str(value))
        if version is not None:
            client.set_model_version_tag(version.name, version.version, TAG + key, str(value))


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.add_argument(
        "--model-name", default=None, help="registered model (default: conf/registry)"
    )


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a step's main: a one-line `error: ...` and exit status 2 for anything the user can
    fix (bad arguments, missing store or run, unreachable server), never a traceback wall."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        sys.exit(main(argv) or 0)
    except UserError as error:
        message = str(error)
    except MlflowException as error:
        message = f"MLflow: {error.message.strip().splitlines()[0]}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
