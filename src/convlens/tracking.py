"""Everything a run writes to MLflow besides Lightning's metrics: config, pictures, the model.

Lightning's `MLFlowLogger` has no image API, so pictures go through `MlflowClient` with the
logger's run id, and only on global rank zero (other ranks have no run).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import MLFlowLogger
from safetensors.torch import save_file

import convlens
from convlens.data import TensorImages, one_per_digit
from convlens.model import ConvNet, activations, summary
from convlens.preprocessing import INPUT_SHAPE, normalize
from convlens.visuals import confusion_figure, digit_gallery, feature_map_grid, filter_grid

WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE_FILE = "architecture.json"


def local_artifact_location(tracking_uri: str, root_dir: str) -> str | None:
    """`<root>/mlartifacts` for a local sqlite store; None lets a tracking server decide."""
    if tracking_uri.startswith("sqlite:"):
        return str(Path(root_dir, "mlartifacts").resolve())
    return None


def mlflow_logger(trainer: Trainer) -> MLFlowLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


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
        client: MlflowClient = logger.experiment
        was_training = net.training
        net.eval()
        with torch.inference_mode():
            x = normalize(self.digits).to(pl_module.device)
            maps = activations(net, x, layers)
        net.train(was_training)
        for layer in layers:
            weights = getattr(net, layer).weight.detach().cpu().float().numpy()
            client.log_image(logger.run_id, filter_grid(weights), key=f"filters/{layer}", step=step)
            for digit in range(10):
                grid = feature_map_grid(maps[layer][digit].cpu().float().numpy())
                key = f"feature_maps/{layer}/digit_{digit}"
                client.log_image(logger.run_id, grid, key=key, step=step)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 0:
            self._log(trainer, pl_module, step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, step=trainer.current_epoch + 1)


@torch.inference_mode()
def predict_labels(net: ConvNet, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat(
        [
            net(normalize(images[i : i + batch_size])).argmax(1)
            for i in range(0, len(images), batch_size)
        ]
    )


def log_evaluation(client: MlflowClient, run_id: str, net: ConvNet, test_set: TensorImages) -> None:
    """Confusion matrix, a gallery of misclassified digits and the model summary."""
    preds = predict_labels(net, test_set.images).numpy()
    labels = test_set.labels.numpy()
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    client.log_figure(run_id, confusion_figure(matrix), "evaluation/confusion_matrix.png")
    client.log_dict(run_id, {"matrix": matrix.tolist()}, "evaluation/confusion_matrix.json")
    wrong = np.flatnonzero(preds != labels)[:64]
    if len(wrong):
        captions = [f"{labels[i]} as {preds[i]}" for i in wrong]
        gallery = digit_gallery(test_set.images[wrong].numpy(), captions)
        client.log_image(run_id, gallery, artifact_file="evaluation/misclassified.png")
    client.log_text(run_id, summary(net), "model_summary.txt")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log_model(tracking_uri: str, run_id: str, net: ConvNet) -> tuple[str, str]:
    """Log the network as an MLflow PyTorch model with safetensors weights and architecture JSON.

    Returns (model URI, sha256 of the weights). The pickled module serves MLflow's own loaders;
    the safetensors file and JSON let serving rebuild the network without unpickling anything.
    """
    net = net.cpu().eval().to(memory_format=torch.contiguous_format)
    example = normalize(torch.zeros(2, *INPUT_SHAPE[1:], dtype=torch.uint8)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp, WEIGHTS_FILE)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
        architecture = Path(tmp, ARCHITECTURE_FILE)
        architecture.write_text(json.dumps(net.architecture, indent=2))
        digest = sha256_of(weights)
        signature = mlflow.models.infer_signature(
            example, net(torch.from_numpy(example)).detach().numpy()
        )
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                net,
                name="model",
                signature=signature,
                input_example=example,
                extra_files=[str(weights), str(architecture)],
                code_paths=[str(Path(convlens.__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                serialization_format="pickle",
                tags={"weights_sha256": digest},
            )
    return info.model_uri, digest
