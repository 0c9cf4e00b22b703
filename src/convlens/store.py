"""The MLflow store the steps share: opening it, finding runs and models, recording steps.

Every release step records what it did as `release.*` tags on the MLflow run and, once
registered, on the model version, so a step that finds its work done says so instead of doing
it again.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import LoggedModel, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from convlens import UserError
from convlens.artifact import LOGGED_MODEL
from convlens.reachability import check_reachable

TAG = "release."  # prefix of every tag the release steps write
SWEEP_ID = "sweep.id"  # the tag every trial of one multirun shares (pipelines.train)


class StepError(UserError):
    """A step cannot run as asked; the message says what to fix."""


def client(uri: str) -> MlflowClient:
    """A client whose registry is the same store (MLflow would otherwise take the registry
    from the process-wide setting)."""
    return MlflowClient(uri, registry_uri=uri)


def open_store(uri: str) -> MlflowClient:
    """A client for `uri`, after checking there is a store to talk to: a missing sqlite file
    or a tracking server that does not answer is an error in seconds, not a hang. Commands
    that checked already (training did, before it began) use `client`."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise StepError(
            f"no MLflow store at {uri}: train first (make train) or set MLFLOW_TRACKING_URI"
        )
    check_reachable(uri)
    return client(uri)


def get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise StepError(f"no run {run_id!r} in {client.tracking_uri}") from None
        raise


def logged_model(client: MlflowClient, run: Run) -> LoggedModel | None:
    """The model training logged for the run, if it got that far."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{LOGGED_MODEL}'",
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


def ui_base(tracking_uri: str, local_ui: str) -> str:
    """Where a person browses the store: the tracking server itself, or for a local sqlite
    store the `make ui` address."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return local_ui.rstrip("/")


def run_page(tracking_uri: str, local_ui: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{ui_base(tracking_uri, local_ui)}/#/experiments/{experiment_id}/runs/{run_id}"
