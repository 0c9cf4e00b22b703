"""What a run writes to MLflow besides Lightning's metrics: its config, and its end (evaluation
and model). The per-epoch pictures come from `convlens.callbacks.MLflowVisuals`.

Lightning's `MLFlowLogger` has no image API; `BufferedMLFlowLogger.log_image` adds one, and
only global rank zero writes (other ranks have no run).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import MLFlowLogger

from convlens.artifact import LOGGED_MODEL, log_model
from convlens.data import TensorImages
from convlens.evaluation import EVALUATION_DIR, SUMMARY_FILE, write_evaluation
from convlens.model import ConvNet
from convlens.outbox import BufferedMLFlowLogger
from convlens.weights import save_weights


def local_artifact_location(tracking_uri: str, root_dir: str) -> str | None:
    """`<root>/mlartifacts` for a local sqlite store; None lets a tracking server decide."""
    if tracking_uri.startswith("sqlite:"):
        return str(Path(root_dir, "mlartifacts").resolve())
    return None


def mlflow_logger(trainer: Trainer) -> BufferedMLFlowLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, BufferedMLFlowLogger)), None)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def log_config(logger: MLFlowLogger, cfg: DictConfig) -> None:
    """What tells the run apart as params (`run_params` in conf/train.yaml), the resolved
    config as `config.yaml`, each data split as a dataset input, and the commit as a tag."""
    from convlens.run_record import log_datasets, run_params

    logger.log_hyperparams(run_params(cfg))
    client = logger.experiment
    client.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    log_datasets(client, logger.run_id, cfg.data)
    commit = git_commit()
    if commit:
        client.set_tag(logger.run_id, "mlflow.source.git.commit", commit)


def model_dir(final_dir: Path | str) -> Path:
    """Where `save_final` puts the model's two files."""
    return Path(final_dir) / LOGGED_MODEL


def save_final(folder: Path, net: ConvNet, test_set: TensorImages) -> str:
    """Write the end-of-run artifacts to `folder` first, so nothing depends on the server:
    the evaluation (`convlens.evaluation`) and the model's two files (`convlens.artifact`).

    Returns the sha256 of the weights. `publish_final` sends the folder to MLflow.
    """
    write_evaluation(folder, net, test_set)
    return save_weights(net, model_dir(folder))


def publish_final(tracking_uri: str, run_id: str, folder: Path) -> str:
    """Log a `save_final` folder to the run: evaluation, summary and the model. Returns its URI."""
    folder = Path(folder)
    client = MlflowClient(tracking_uri)
    client.log_artifacts(run_id, str(folder / EVALUATION_DIR), EVALUATION_DIR)
    client.log_artifact(run_id, str(folder / SUMMARY_FILE))
    return log_model(tracking_uri, run_id, model_dir(folder))
