"""The model registry: register each run's model, and move `champion` only to a better one."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
POLICIES = ("always", "better", "never")


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    candidate_acc: float
    champion_version: str | None
    champion_acc: float | None


def register(
    client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> ModelVersion:
    """Register the run's model once: a second call for the same run returns that version."""
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return existing[0]
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # A tracking server only accepts a `models:/<model_id>` source together with its model_id,
    # and MLflow looks that model up in the process-wide store, so point it at this client's.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mlflow.set_tracking_uri(client.tracking_uri)
    return client.create_model_version(name, model_uri, run_id=run_id, tags=tags, model_id=model_id)


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(
    client: MlflowClient, name: str, version: ModelVersion, candidate_acc: float, policy: str
) -> Decision:
    """Apply the promotion policy and record the decision on the version and its run."""
    if policy not in POLICIES:
        raise ValueError(f"registry.promote must be one of {', '.join(POLICIES)}, got {policy!r}")
    current = champion(client, name)
    current_acc = (
        float(current.tags["test_acc"]) if current and "test_acc" in current.tags else None
    )
    if current is not None and current.version == version.version:
        decision = Decision(True, "already champion", candidate_acc, current.version, current_acc)
    elif policy == "never":
        decision = Decision(False, "policy is never", candidate_acc, _v(current), current_acc)
    elif policy == "always":
        decision = Decision(True, "policy is always", candidate_acc, _v(current), current_acc)
    elif current is None or current_acc is None:
        decision = Decision(True, "first model", candidate_acc, _v(current), current_acc)
    elif candidate_acc > current_acc:
        reason = (
            f"test_acc {candidate_acc:.4f} beats champion v{current.version} ({current_acc:.4f})"
        )
        decision = Decision(True, reason, candidate_acc, current.version, current_acc)
    else:
        reason = (
            f"test_acc {candidate_acc:.4f} does not beat champion v{current.version} "
            f"({current_acc:.4f})"
        )
        decision = Decision(False, reason, candidate_acc, current.version, current_acc)

    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "kept",
        "promotion.reason": decision.reason,
        "promotion.policy": policy,
        "promotion.candidate_test_acc": f"{candidate_acc:.6f}",
        "promotion.champion_version": decision.champion_version or "none",
        "promotion.champion_test_acc": (
            f"{decision.champion_acc:.6f}" if decision.champion_acc is not None else "none"
        ),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
        if version.run_id:
            client.set_tag(version.run_id, key, value)
    return decision


def _v(version: ModelVersion | None) -> str | None:
    return version.version if version else None
