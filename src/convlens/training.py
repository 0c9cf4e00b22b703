"""One training run from a composed config: fit, test the best checkpoint, log the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from pytorch_lightning import Trainer, seed_everything

from convlens.module import net_from_checkpoint
from convlens.recovery import CHECKPOINT_DIR_TAG, find_resumable
from convlens.tracking import (
    local_artifact_location,
    log_config,
    log_evaluation,
    log_model,
    mlflow_logger,
)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    test_acc: float
    val_acc_best: float
    best_checkpoint: str
    model_uri: str
    weights_sha256: str


def build_trainer(cfg: DictConfig) -> Trainer:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "mlflow":
            location = logger_cfg.get("artifact_location") or local_artifact_location(
                logger_cfg.tracking_uri, cfg.paths.root_dir
            )
            loggers.append(instantiate(logger_cfg, artifact_location=location))
        else:
            loggers.append(instantiate(logger_cfg))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def resume_from(cfg: DictConfig) -> None:
    """Point the config at the run being resumed: its MLflow run, checkpoints and last.ckpt."""
    mlflow_cfg = cfg.logger.mlflow
    found = find_resumable(mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name, cfg.resume)
    with open_dict(cfg):
        cfg.logger.mlflow.run_id = found.run_id
        cfg.callbacks.model_checkpoint.dirpath = found.checkpoint_dir
        cfg.ckpt_path = found.checkpoint


def train(cfg: DictConfig) -> TrainResult | None:
    """Run the whole training; returns the result on global rank zero, None on other ranks."""
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))

    if cfg.get("resume"):
        resume_from(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data before any MLflow run exists
    net = instantiate(cfg.model, _convert_="all")
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = instantiate(
        cfg.module, net=net, optimizer=instantiate(cfg.optimizer), scheduler=scheduler
    )
    trainer = build_trainer(cfg)

    logger = mlflow_logger(trainer)
    if logger is not None and trainer.is_global_zero:
        if cfg.get("resume"):
            logger.experiment.set_tag(logger.run_id, "convlens.resumed_from", cfg.ckpt_path)
        else:
            log_config(logger, cfg)
            checkpoint_dir = str(Path(trainer.checkpoint_callback.dirpath).resolve())
            logger.experiment.set_tag(logger.run_id, CHECKPOINT_DIR_TAG, checkpoint_dir)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if not trainer.is_global_zero or logger is None:
        return None

    metrics = trainer.callback_metrics
    best_net = net_from_checkpoint(best) if best else module.net.cpu().eval()
    client = logger.experiment
    log_evaluation(client, logger.run_id, best_net, datamodule.test_set)
    tracking_uri = cfg.logger.mlflow.tracking_uri
    model_uri, digest = log_model(tracking_uri, logger.run_id, best_net)
    val_best = metrics.get("val/acc_best")
    return TrainResult(
        run_id=logger.run_id,
        experiment_id=logger.experiment_id,
        tracking_uri=tracking_uri,
        test_acc=float(metrics["test/acc"]),
        val_acc_best=float(val_best) if val_best is not None else float("nan"),
        best_checkpoint=best,
        model_uri=model_uri,
        weights_sha256=digest,
    )
