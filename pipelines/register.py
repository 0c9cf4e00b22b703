"""`make register`: register a run's model and move `@champion` to it only if it is better.

    python -m pipelines.register                     the newest finished run with a model
    python -m pipelines.register --run-id RUN_ID     that run
    python -m pipelines.register --policy always     promote whatever the accuracy (or: never)

The accuracy compared is the run's `release.eval_test_acc` when `pipelines.evaluate` has
recorded one, else the test accuracy training logged (`test/acc`). Registering a run twice
returns its existing version; promotion is decided by `convlens.registry.promote` and recorded
there as `promotion.*` tags. This step adds `release.registered_model`,
`release.registered_version` and `release.test_acc_source` to the run and the version.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from convlens.registry import POLICIES, Decision, promote, register
from pipelines.common import (
    TAG,
    Parser,
    StepError,
    add_store_arguments,
    default_tracking_uri,
    experiment_name,
    get_run,
    latest_run,
    logged_model,
    open_store,
    record,
    registry_name,
    registry_policy,
    run_cli,
    version_of_run,
)


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
) -> Registration:
    """Register the model (once per run), apply the promotion policy, record both."""
    existed = version_of_run(client, name, run_id) is not None
    tags = {"test_acc": f"{test_acc:.6f}", "weights_sha256": weights_sha256}
    version = register(client, name, model_uri, run_id, tags)
    if version.tags.get("test_acc") != tags["test_acc"]:
        # Registered earlier with training's own test accuracy; the newer measurement counts.
        client.set_model_version_tag(name, version.version, "test_acc", tags["test_acc"])
    decision = promote(client, name, version, test_acc, policy)
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


def register_run(client: MlflowClient, name: str, run_id: str, policy: str) -> Registration:
    if policy not in POLICIES:
        raise StepError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
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
        model.tags.get("weights_sha256", ""),
        policy,
        source,
    )


def outcome(decision: Decision) -> str:
    if decision.reason == "already champion":
        return "already champion"
    if decision.promoted:
        return f"now champion ({decision.reason})"
    return f"champion unchanged ({decision.reason})"


def describe(registration: Registration) -> str:
    version = registration.version
    first = "already registered as" if registration.existed else "registered"
    return (
        f"{first} {version.name} version {version.version} (test acc "
        f"{registration.test_acc:.4f}, {registration.acc_source}): {outcome(registration.decision)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.register", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="the MLflow run whose model to register")
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default=None,
        help="promotion policy (default: registry.promote in conf/registry/default.yaml)",
    )
    add_store_arguments(parser)
    args = parser.parse_args(argv)

    client = open_store(args.tracking_uri or default_tracking_uri())
    run_id = args.run_id
    if run_id is None:
        run = latest_run(client, experiment_name())
        if run is None:
            print(f"nothing to register: no finished run with a model in {experiment_name()!r}")
            return 0
        run_id = run.info.run_id
    registration = register_run(
        client, args.model_name or registry_name(), run_id, args.policy or registry_policy()
    )
    print(describe(registration))
    return 0


if __name__ == "__main__":
    run_cli(main)
