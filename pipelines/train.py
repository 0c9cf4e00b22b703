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
from omegaconf import DictConfig, open_dict

from convlens.cli import TEMPFAIL, errors_as_lines
from convlens.config import Settings
from convlens.console import quiet_console
from convlens.reachability import check_reachable

if TYPE_CHECKING:
    from convlens.registry import Registration
    from convlens.training import TrainResult


def report(result: TrainResult, found: Settings, registration: Registration | None) -> None:
    from convlens.store import run_page

    page = run_page(result.tracking_uri, found.mlflow_ui, result.experiment_id, result.run_id)
    print(f"\nrun        {result.run_id}  ({page})\ntest acc   {result.test_acc:.4f}")
    if registration is not None:
        decision = registration.decision
        print(
            f"registered {found.model_name} version {registration.version.version}: "
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
    from convlens.store import SWEEP_ID

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


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_console()  # third-party chatter to the log file only
    tag_sweep_trial(cfg)
    with errors_as_lines():
        found = Settings.of(cfg)  # a bad promotion policy fails before training
        if cfg.get("logger") and "mlflow" in cfg.logger:
            check_reachable(found.tracking_uri)  # seconds, before the heavy imports
        from convlens.recovery import resume_from

        resume_from(cfg)  # nothing to resume is told before them too
        from convlens.training import train

        result = train(cfg)
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
        sys.exit(TEMPFAIL)  # trained, but tracking is incomplete until uploaded
    from convlens.release import register_trained
    from convlens.store import client

    registration = register_trained(client(found.tracking_uri), found, result, result.test_acc)
    report(result, found, registration)
    return result.val_acc_best


if __name__ == "__main__":
    main()
