"""`make release`: train, evaluate, register, promote if better, package the champion.

One step after another on one composed config, each the library function its own command
runs (`pipelines.evaluate|register|package`), each recording what it did as `release.*` tags.
`say(number, step, text)` reports progress; the pipeline prints it as `[n/5] step  text`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from convlens import UserError
from convlens.cli import TEMPFAIL
from convlens.config import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from convlens.registry import Registration
    from convlens.training import TrainResult

STEPS = 5


def register_trained(
    store: MlflowClient,
    found: Settings,
    result: TrainResult,
    test_acc: float,
    acc_source: str = "test/acc",
) -> Registration | None:
    """After training: register and promote the run's model (when the registry is on), then
    write the run's description with the decision. `make train` and `make release` share it."""
    from convlens.registry import register_and_promote
    from convlens.run_record import describe_run
    from convlens.tracking import model_dir

    registration = None
    if found.registry_enabled:
        registration = register_and_promote(
            store,
            found.model_name,
            result.run_id,
            result.model_uri,
            test_acc,
            result.weights_sha256,
            found.policy,
            acc_source,
            found.feedback_gate,
        )
    model = model_dir(result.final_dir)
    describe_run(store, result.run_id, model, result.epochs, test_acc, registration)
    return registration


class ServerGone(UserError):
    """Training finished but could not log its end: the release stops there."""

    exit_status = TEMPFAIL


def release(cfg: DictConfig, found: Settings, say: Callable[[int, str, str], None]) -> None:
    """Run the five steps; the caller has checked `found` and that the store answers."""
    if not cfg.get("logger") or "mlflow" not in cfg.logger:
        raise UserError("a release needs the MLflow logger: drop the logger override")
    from convlens.recovery import resume_from

    resume_from(cfg)  # as `make train` does, before the heavy imports
    from convlens.evaluation import evaluate_run
    from convlens.packaging import package
    from convlens.registry import outcome
    from convlens.store import client, record
    from convlens.training import train

    result = train(cfg)
    if result is None:  # not global rank zero: that process has nothing more to do
        return
    if result.unlogged_dir:
        raise ServerGone(
            f"the MLflow server at {result.tracking_uri} stopped answering: run {result.run_id} "
            f"is trained but its end waits in {result.unlogged_dir}. Once the server is back: "
            f"python -m pipelines.upload {result.unlogged_dir}, then "
            f"python -m pipelines.evaluate --run-id {result.run_id} (and register, package)"
        )
    store = client(found.tracking_uri)
    record(store, {"pipeline": "release"}, run_id=result.run_id)
    say(1, "train", f"run {result.run_id}: test acc {result.test_acc:.4f}")

    evaluation = evaluate_run(store, result.run_id, found.data_root, found.test_subset)
    say(
        2,
        "evaluate",
        f"logged model: test acc {evaluation.test_acc:.4f} on {evaluation.images:,} images",
    )

    source = f"eval/test_acc on {evaluation.images} test images"
    registration = register_trained(store, found, result, evaluation.test_acc, source)
    if registration is None:
        say(3, "register", "skipped: registry.enabled=false")
        say(4, "promote", "skipped: nothing registered")
        say(5, "package", "skipped: nothing registered")
        return
    version = registration.version.version
    say(3, "register", f"{found.model_name} version {version}")
    decision = registration.decision
    record(
        store,
        {"promoted": str(decision.promoted).lower()},
        run_id=result.run_id,
        version=registration.version,
    )
    say(4, "promote", outcome(decision))

    if not decision.promoted:
        say(5, "package", "nothing to do: the champion did not change, no new Bento")
        return
    found.use_bentoml_home()
    packaged = package(store, found, expected=str(version))
    how = "built" if packaged.bento_built else "already built"
    say(5, "package", f"model {packaged.model_tag}, Bento {packaged.bento_tag} ({how})")
