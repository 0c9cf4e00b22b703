"""`make train`: train the CNN, log everything to MLflow, register it, promote it if better.

python -m pipelines.train [hydra overrides]    e.g. model=keras_example trainer.max_epochs=3
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow import MlflowClient
from omegaconf import DictConfig, open_dict

from convlens import UserError
from convlens.reachability import check_reachable
from convlens.registry import POLICIES
from pipelines.common import SWEEP_ID, StepError
from pipelines.register import register_and_promote

if TYPE_CHECKING:
    from convlens.training import TrainResult


def report(result: TrainResult, version: str, decision) -> None:
    base = (
        "http://127.0.0.1:5000" if result.tracking_uri.startswith("sqlite") else result.tracking_uri
    )
    page = f"{base}/#/experiments/{result.experiment_id}/runs/{result.run_id}"
    print(
        f"\nrun        {result.run_id}  ({page})"
        f"\ntest acc   {result.test_acc:.4f}"
        f"\nregistered convlens-mnist version {version}: "
        f"{'now champion' if decision.promoted else 'champion unchanged'} ({decision.reason})"
    )


def tag_sweep_trial(cfg: DictConfig) -> None:
    """Under `-m` (multirun), tag the run with the sweep's id and the trial's number.

    The id derives from the sweep's output folder, which every trial of one sweep shares
    whatever launcher runs them, and which no other sweep uses.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or not cfg.get("logger") or "mlflow" not in cfg.logger:
        return
    sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
    sweep_id = f"{sweep_dir.name}-{hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:8]}"
    trial = hydra_cfg.job.num
    with open_dict(cfg):
        tags = dict(cfg.logger.mlflow.get("tags") or {})
        tags.update(
            {
                SWEEP_ID: sweep_id,
                "sweep.trial": str(trial),
                "sweep.dir": str(sweep_dir),
                "sweep.overrides": json.dumps(list(hydra_cfg.overrides.task)),
            }
        )
        cfg.logger.mlflow.tags = tags
        if not cfg.logger.mlflow.get("run_name"):
            cfg.logger.mlflow.run_name = f"sweep-{sweep_id}-trial-{trial}"


def check_registry(cfg: DictConfig) -> None:
    """A bad promotion policy is an error before training, not after."""
    if cfg.registry.enabled and cfg.registry.promote not in POLICIES:
        raise StepError(
            f"registry.promote must be one of {', '.join(POLICIES)}, got {cfg.registry.promote!r}"
        )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    tag_sweep_trial(cfg)
    try:
        check_registry(cfg)
        if cfg.get("logger") and "mlflow" in cfg.logger:
            check_reachable(cfg.logger.mlflow.tracking_uri)  # seconds, before the heavy imports
        from convlens.training import train

        result = train(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if result is None:
        return None
    if result.unlogged_dir:
        print(
            f"\ntest acc   {result.test_acc:.4f}\nwarning: the MLflow server at "
            f"{result.tracking_uri} did not answer, so the end of run {result.run_id} (metrics, "
            f"images, evaluation, model, registration) is waiting in {result.unlogged_dir}; "
            f"checkpoints and the model are in {result.final_dir}.\nUpload them once it is back: "
            f"python -m pipelines.upload {result.unlogged_dir}",
            file=sys.stderr,
        )
        sys.exit(75)  # EX_TEMPFAIL: trained, but tracking is incomplete until uploaded
    if cfg.registry.enabled:
        registration = register_and_promote(
            MlflowClient(result.tracking_uri),
            cfg.registry.name,
            result.run_id,
            result.model_uri,
            result.test_acc,
            result.weights_sha256,
            cfg.registry.promote,
        )
        report(result, registration.version.version, registration.decision)
    return result.val_acc_best


if __name__ == "__main__":
    main()
