"""The model registry: register each run's model, and move `champion` only to a better one.

`promote` decides by the policy in `conf/registry/` (checked once, by `convlens.config`) and
records the decision as `promotion.*` tags; `register_and_promote` is the release's register
step, shared by `make train`, `make release`, `pipelines.register` and `pipelines.upload`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from convlens.artifact import TEST_ACC, WEIGHTS_SHA256
from convlens.config import POLICIES, FeedbackGate
from convlens.holdout import HoldoutScore, compare, verdict
from convlens.store import TAG, StepError, get_run, logged_model, record, version_of_run

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    candidate_acc: float
    champion_version: str | None
    champion_acc: float | None
    candidate_feedback: HoldoutScore | None = None
    champion_feedback: HoldoutScore | None = None


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
    client: MlflowClient,
    name: str,
    version: ModelVersion,
    candidate_acc: float,
    policy: str,
    gate: FeedbackGate | None = None,
) -> Decision:
    """Apply the promotion policy and record the decision on the version and its run.

    Under `better`, a challenger that beats the champion's test_acc is still kept out when it
    falls behind on the feedback hold-out, both scored on it now (`gate`, `convlens.holdout`).
    Commands refuse an unknown policy before they start (`convlens.config.Settings`); a
    library caller passing one is a bug."""
    if policy not in POLICIES:
        raise ValueError(f"registry.promote must be one of {', '.join(POLICIES)}, got {policy!r}")
    current = champion(client, name)
    current_acc = float(current.tags[TEST_ACC]) if current and TEST_ACC in current.tags else None
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
        if gate is None:
            decision = Decision(True, reason, candidate_acc, current.version, current_acc)
        else:
            comparison = compare(client, gate, version, current)
            behind, why = verdict(gate, comparison)
            reason = f"{reason} but {why}" if behind else f"{reason}; {why}"
            decision = Decision(
                not behind,
                reason,
                candidate_acc,
                current.version,
                current_acc,
                comparison.candidate,
                comparison.champion,
            )
    else:
        reason = (
            f"test_acc {candidate_acc:.4f} does not beat champion v{current.version} "
            f"({current_acc:.4f})"
        )
        decision = Decision(False, reason, candidate_acc, current.version, current_acc)

    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    ours, theirs = decision.candidate_feedback, decision.champion_feedback
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "kept",
        "promotion.reason": decision.reason,
        "promotion.policy": policy,
        "promotion.candidate_test_acc": f"{candidate_acc:.6f}",
        "promotion.champion_version": decision.champion_version or "none",
        "promotion.champion_test_acc": (
            f"{decision.champion_acc:.6f}" if decision.champion_acc is not None else "none"
        ),
        "promotion.candidate_feedback_acc": f"{ours.acc:.6f}" if ours else "none",
        "promotion.champion_feedback_acc": f"{theirs.acc:.6f}" if theirs else "none",
        "promotion.feedback_holdout": f"{ours.digest} ({ours.examples} digits)" if ours else "none",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
        if version.run_id:
            client.set_tag(version.run_id, key, value)
    return decision


def _v(version: ModelVersion | None) -> str | None:
    return version.version if version else None


@dataclass(frozen=True)
class Registration:
    version: ModelVersion
    decision: Decision
    test_acc: float
    acc_source: str
    existed: bool  # the run was registered before this call


def register_and_promote(
    client: MlflowClient,
    name: str,
    run_id: str,
    model_uri: str,
    test_acc: float,
    weights_sha256: str,
    policy: str,
    acc_source: str = "test/acc",
    gate: FeedbackGate | None = None,
) -> Registration:
    """Register the model (once per run), apply the promotion policy, record both."""
    existed = version_of_run(client, name, run_id) is not None
    tags = {TEST_ACC: f"{test_acc:.6f}", WEIGHTS_SHA256: weights_sha256}
    version = register(client, name, model_uri, run_id, tags)
    if version.tags.get(TEST_ACC) != tags[TEST_ACC]:
        # Registered earlier with training's own test accuracy; the newer measurement counts.
        client.set_model_version_tag(name, version.version, TEST_ACC, tags[TEST_ACC])
    decision = promote(client, name, version, test_acc, policy, gate)
    record(
        client,
        {
            "registered_model": name,
            "registered_version": version.version,
            "test_acc_source": acc_source,
        },
        run_id=run_id,
        version=version,
    )
    return Registration(version, decision, test_acc, acc_source, existed)


def candidate_accuracy(run: Run) -> tuple[float, str]:
    """The evaluated test accuracy if there is one, else the one training logged."""
    tags, metrics = run.data.tags, run.data.metrics
    if TAG + "eval_test_acc" in tags:
        images = tags.get(TAG + "eval_test_images", "?")
        return float(tags[TAG + "eval_test_acc"]), f"eval/test_acc on {images} test images"
    if "test/acc" in metrics:
        return float(metrics["test/acc"]), "test/acc"
    raise StepError(
        f"run {run.info.run_id} has no test accuracy: "
        f"run python -m pipelines.evaluate --run-id {run.info.run_id} first"
    )


def register_run(
    client: MlflowClient, name: str, run_id: str, policy: str, gate: FeedbackGate | None = None
) -> Registration:
    """Register a finished run's logged model with its best known test accuracy."""
    run = get_run(client, run_id)
    model = logged_model(client, run)
    if model is None:
        raise StepError(f"run {run_id} has no logged model (did its training finish?)")
    accuracy, source = candidate_accuracy(run)
    return register_and_promote(
        client,
        name,
        run_id,
        f"models:/{model.model_id}",
        accuracy,
        model.tags.get(WEIGHTS_SHA256, ""),
        policy,
        source,
        gate,
    )


def outcome(decision: Decision) -> str:
    if decision.reason == "already champion":
        return "already champion"
    if decision.promoted:
        return f"now champion ({decision.reason})"
    return f"champion unchanged ({decision.reason})"


def describe(registration: Registration) -> str:
    """One line: which version, with what accuracy, and what became of `@champion`."""
    version = registration.version
    first = "already registered as" if registration.existed else "registered"
    return (
        f"{first} {version.name} version {version.version} (test acc "
        f"{registration.test_acc:.4f}, {registration.acc_source}): {outcome(registration.decision)}"
    )
