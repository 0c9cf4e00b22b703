"""`make train`: train the CNN, log everything to MLflow, register it, promote it if better.

python -m pipelines.train [hydra overrides]    e.g. model=keras_example trainer.max_epochs=3
"""

from __future__ import annotations

import sys

import hydra
from mlflow import MlflowClient
from omegaconf import DictConfig

from convlens.data import DataError
from convlens.registry import promote, register
from convlens.training import TrainResult, train


def report(result: TrainResult, version: str, decision) -> None:
    base = (
        "http://127.0.0.1:5000" if result.tracking_uri.startswith("sqlite") else result.tracking_uri
    )
    print(
        f"\nrun        {result.run_id}  ({base}/#/experiments/{result.experiment_id}/runs/{result.run_id})"
        f"\ntest acc   {result.test_acc:.4f}"
        f"\nregistered convlens-mnist version {version}: "
        f"{'now champion' if decision.promoted else 'champion unchanged'} ({decision.reason})"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        result = train(cfg)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if result is None:
        return None
    if cfg.registry.enabled:
        client = MlflowClient(result.tracking_uri)
        tags = {"test_acc": f"{result.test_acc:.6f}", "weights_sha256": result.weights_sha256}
        version = register(client, cfg.registry.name, result.model_uri, result.run_id, tags)
        decision = promote(
            client, cfg.registry.name, version, result.test_acc, cfg.registry.promote
        )
        report(result, version.version, decision)
    return result.val_acc_best


if __name__ == "__main__":
    main()
