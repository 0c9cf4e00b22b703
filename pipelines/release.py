"""`make release`: train, evaluate, register, promote if better, package the champion.

    python -m pipelines.release [hydra overrides]    e.g. experiment=fast trainer.max_epochs=3

The same Hydra config and overrides as `pipelines.train`, then one step after another:

1. train     `convlens.training.train`: fit, test the best checkpoint, log the model
2. evaluate  `pipelines.evaluate`: test the *logged* model on the configured test set
3. register  `pipelines.register`: register the model version (registry.enabled)
4. promote   move `@champion` only if the policy says so (registry.promote: better by default)
5. package   `pipelines.package`: the champion into the BentoML model store, then a Bento;
             skipped when the champion did not change (no new champion, no new Bento)

Each step can run alone (`python -m pipelines.evaluate|register|package`), and each records
what it did as `release.*` tags on the run and the model version. Works against the local
sqlite store or a tracking server (MLFLOW_TRACKING_URI=http://...).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import hydra
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from convlens import UserError
from convlens.reachability import check_reachable
from pipelines.common import record
from pipelines.evaluate import evaluate_run
from pipelines.package import PackageError
from pipelines.register import outcome, register_and_promote
from pipelines.train import check_registry


class ServerGone(UserError):
    """Training finished but could not log its end: the release stops there."""


@dataclass(frozen=True)
class Packaged:
    model_tag: str
    bento_tag: str
    new: bool


def package_version(client: MlflowClient, name: str, version: str) -> Packaged:
    """Import the champion into the BentoML store and build its Bento, unless the version
    already records a Bento that is still in the store."""
    from pipelines import package

    package.use_defaults()  # BENTOML_HOME before bentoml is imported
    import bentoml
    from bentoml.exceptions import NotFound

    champ = package.find_champion(client.tracking_uri, name)
    if str(champ.version) != str(version):
        raise PackageError(f"@champion moved to v{champ.version} while packaging v{version}")
    registered = client.get_model_version(name, version)
    recorded = registered.tags.get("release.bento")
    if recorded:
        try:
            bentoml.bentos.get(recorded)
            return Packaged(registered.tags.get("release.bentoml_model", ""), recorded, new=False)
        except NotFound:
            pass  # recorded in another BentoML home, or deleted since: build it here
    model_tag, _ = package.import_champion(champ, client.tracking_uri)
    bento_tag = package.build_bento(champ, model_tag)
    home = os.environ["BENTOML_HOME"]
    tags = {"bentoml_model": model_tag, "bento": bento_tag, "bentoml_home": home}
    record(client, tags, run_id=champ.run_id or None, version=registered)
    return Packaged(model_tag, bento_tag, new=True)


def step(number: int, name: str, text: str) -> None:
    print(f"[{number}/5] {name:<9} {text}", flush=True)


def release(cfg: DictConfig) -> None:
    check_registry(cfg)
    if not cfg.get("logger") or "mlflow" not in cfg.logger:
        raise UserError("a release needs the MLflow logger: drop the logger override")
    check_reachable(cfg.logger.mlflow.tracking_uri)  # seconds, before the heavy imports
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
    client = MlflowClient(result.tracking_uri)
    record(client, {"pipeline": "release"}, run_id=result.run_id)
    step(1, "train", f"run {result.run_id}: test acc {result.test_acc:.4f}")

    evaluation = evaluate_run(client, result.run_id, cfg.data.root, cfg.data.get("test_subset"))
    step(
        2,
        "evaluate",
        f"logged model: test acc {evaluation.test_acc:.4f} on {evaluation.images:,} images",
    )

    if not cfg.registry.enabled:
        step(3, "register", "skipped: registry.enabled=false")
        step(4, "promote", "skipped: nothing registered")
        step(5, "package", "skipped: nothing registered")
        return
    name = cfg.registry.name
    registration = register_and_promote(
        client,
        name,
        result.run_id,
        result.model_uri,
        evaluation.test_acc,
        result.weights_sha256,
        cfg.registry.promote,
        acc_source=f"eval/test_acc on {evaluation.images} test images",
    )
    version = registration.version.version
    step(3, "register", f"{name} version {version}")
    decision = registration.decision
    promoted = {"promoted": str(decision.promoted).lower()}
    record(client, promoted, run_id=result.run_id, version=registration.version)
    step(4, "promote", outcome(decision))

    if not decision.promoted:
        step(5, "package", "nothing to do: the champion did not change, no new Bento")
        return
    packaged = package_version(client, name, version)
    how = "built" if packaged.new else "already built"
    step(5, "package", f"model {packaged.model_tag}, Bento {packaged.bento_tag} ({how})")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        release(cfg)
    except ServerGone as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(75)  # EX_TEMPFAIL, as pipelines.train: retry once the server is back
    except (UserError, PackageError) as error:
        message = str(error)
    except MlflowException as error:
        message = f"MLflow: {error.message.strip().splitlines()[0]}"
    else:
        return
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
