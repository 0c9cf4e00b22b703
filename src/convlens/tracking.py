"""Everything a run writes to MLflow besides Lightning's metrics: config, pictures, the model.

Lightning's `MLFlowLogger` has no image API; `BufferedMLFlowLogger.log_image` adds one, and
only global rank zero writes (other ranks have no run).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import MLFlowLogger

import convlens
from convlens.data import TensorImages, one_per_digit
from convlens.model import ConvNet, activations, summary
from convlens.outbox import BufferedMLFlowLogger
from convlens.preprocessing import INPUT_SHAPE, normalize
from convlens.visuals import confusion_figure, digit_gallery, feature_map_grid, filter_grid
from convlens.weights import ARCHITECTURE_FILE, WEIGHTS_FILE, load_weights, save_weights, sha256_of


def local_artifact_location(tracking_uri: str, root_dir: str) -> str | None:
    """`<root>/mlartifacts` for a local sqlite store; None lets a tracking server decide."""
    if tracking_uri.startswith("sqlite:"):
        return str(Path(root_dir, "mlartifacts").resolve())
    return None


def mlflow_logger(trainer: Trainer) -> BufferedMLFlowLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, BufferedMLFlowLogger)), None)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config to dotted keys, the form MLflow params can be searched by."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def log_config(logger: MLFlowLogger, cfg: DictConfig) -> None:
    """The resolved config as flattened params, as `config.yaml`, and the commit as a tag."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger.log_hyperparams(flatten({k: v for k, v in resolved.items() if k != "hydra"}))
    client = logger.experiment
    client.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    commit = git_commit()
    if commit:
        client.set_tag(logger.run_id, "mlflow.source.git.commit", commit)


class MLflowVisuals(Callback):
    """Per epoch: the learned filters and the feature maps of ten fixed test digits.

    Step 0 is the untrained network, step k the network after k epochs, so the run page's
    step slider shows the filters and feature maps taking shape.
    """

    def __init__(self, layers: list[str] | None = None):
        self.layers = layers
        self.digits: torch.Tensor | None = None

    def _log(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        logger = mlflow_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        net: ConvNet = pl_module.net
        layers = self.layers or net.conv_layer_names()
        if self.digits is None:
            test_set: TensorImages = trainer.datamodule.test_set
            self.digits = test_set.images[one_per_digit(test_set.labels)]
        was_training = net.training
        net.eval()
        with torch.inference_mode():
            x = normalize(self.digits).to(pl_module.device)
            maps = activations(net, x, layers)
        net.train(was_training)
        for layer in layers:
            weights = getattr(net, layer).weight.detach().cpu().float().numpy()
            logger.log_image(filter_grid(weights), key=f"filters/{layer}", step=step)
            for digit in range(10):
                grid = feature_map_grid(maps[layer][digit].cpu().float().numpy())
                key = f"feature_maps/{layer}/digit_{digit}"
                logger.log_image(grid, key=key, step=step)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 0:
            self._log(trainer, pl_module, step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, step=trainer.current_epoch + 1)


@torch.inference_mode()
def predict_labels(net: ConvNet, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    batches = range(0, len(images), batch_size)
    return torch.cat([net(normalize(images[i : i + batch_size])).argmax(1) for i in batches])


def save_final(folder: Path, net: ConvNet, test_set: TensorImages) -> str:
    """Write the end-of-run artifacts to `folder` first, so nothing depends on the server.

    Returns the sha256 of the weights. `publish_final` sends the folder to MLflow.
    """
    folder = Path(folder)
    (folder / "evaluation").mkdir(parents=True, exist_ok=True)
    preds = predict_labels(net, test_set.images).numpy()
    labels = test_set.labels.numpy()
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    confusion_figure(matrix).savefig(folder / "evaluation" / "confusion_matrix.png", dpi=100)
    (folder / "evaluation" / "confusion_matrix.json").write_text(
        json.dumps({"matrix": matrix.tolist()})
    )
    wrong = np.flatnonzero(preds != labels)[:64]
    if len(wrong):
        captions = [f"{labels[i]} as {preds[i]}" for i in wrong]
        gallery = digit_gallery(test_set.images[wrong].numpy(), captions)
        gallery.save(folder / "evaluation" / "misclassified.png")
    (folder / "model_summary.txt").write_text(summary(net))
    return save_weights(net, folder / "model")


def publish_final(tracking_uri: str, run_id: str, folder: Path) -> str:
    """Log a `save_final` folder to the run: evaluation, summary and the model. Returns its URI.

    The model is rebuilt from the safetensors file, so what MLflow holds is exactly what
    serving will load. MLflow's loaders get a pickled module beside it.
    """
    folder = Path(folder)
    client = MlflowClient(tracking_uri)
    client.log_artifacts(run_id, str(folder / "evaluation"), "evaluation")
    client.log_artifact(run_id, str(folder / "model_summary.txt"))
    net = load_weights(folder / "model")
    digest = sha256_of(folder / "model" / WEIGHTS_FILE)
    example = normalize(torch.zeros(2, *INPUT_SHAPE[1:], dtype=torch.uint8)).numpy()
    with torch.inference_mode():
        output = net(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            net,
            name="model",
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            extra_files=[
                str(folder / "model" / WEIGHTS_FILE),
                str(folder / "model" / ARCHITECTURE_FILE),
            ],
            code_paths=[str(Path(convlens.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
            serialization_format="pickle",
            tags={"weights_sha256": digest},
        )
    return info.model_uri
