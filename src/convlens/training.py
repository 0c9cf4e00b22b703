"""One training run from a composed config: instantiate, fit, test the best checkpoint, finish
(log the evaluation and the model)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback, LightningDataModule, Trainer, seed_everything

from convlens import top_patches
from convlens.embedding import Sample
from convlens.evaluation import EVALUATION_DIR
from convlens.interrupts import NoLostInterrupt
from convlens.module import Classifier, net_from_checkpoint
from convlens.recovery import CHECKPOINT_DIR_TAG
from convlens.tracking import (
    local_artifact_location,
    log_config,
    mlflow_logger,
    model_dir,
    publish_final,
    save_final,
)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    test_acc: float
    val_acc_best: float
    best_checkpoint: str
    final_dir: str
    weights_sha256: str
    epochs: int = 0
    model_uri: str | None = None
    unlogged_dir: str | None = None  # set when the tracking server could not take the end


def build_trainer(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> Trainer:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "mlflow":
            location = logger_cfg.get("artifact_location") or local_artifact_location(
                logger_cfg.tracking_uri, cfg.paths.root_dir
            )
            loggers.append(instantiate(logger_cfg, artifact_location=location))
        else:
            loggers.append(instantiate(logger_cfg))
    # First: its `on_exception` runs even when a later callback's fails.
    callbacks = [
        NoLostInterrupt(),
        *(instantiate(c) for c in (cfg.get("callbacks") or {}).values()),
    ]
    callbacks.extend(extra_callbacks)  # e.g. the sweep's report to its Optuna trial
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def instantiate_all(
    cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()
) -> tuple[LightningDataModule, Classifier, Trainer]:
    """The data, the module around the network, and the trainer with its loggers and callbacks."""
    datamodule = instantiate(cfg.data, _convert_="all")  # plain values: checkpoints load safely
    datamodule.prepare_data()  # fail on missing data before any MLflow run exists
    net = instantiate(cfg.model, _convert_="all")
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = instantiate(
        cfg.module, net=net, optimizer=instantiate(cfg.optimizer), scheduler=scheduler
    )
    return datamodule, module, build_trainer(cfg, extra_callbacks)


def start_run(cfg: DictConfig, trainer: Trainer) -> None:
    """What the MLflow run records before the first step: the config, where checkpoints go
    (for `resume=`), or which checkpoint a resumed run carries on from."""
    logger = mlflow_logger(trainer)
    if logger is None or not trainer.is_global_zero:
        return
    if cfg.get("resume"):
        logger.experiment.set_tag(logger.run_id, "convlens.resumed_from", cfg.ckpt_path)
        return
    log_config(logger, cfg)
    checkpoint_dir = str(Path(trainer.checkpoint_callback.dirpath).resolve())
    logger.experiment.set_tag(logger.run_id, CHECKPOINT_DIR_TAG, checkpoint_dir)


def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> TrainResult | None:
    """Run the whole training; returns the result on global rank zero, None on other ranks.

    The caller checks that the tracking server answers (`convlens.reachability`) and points
    a `resume=` config at its run (`convlens.recovery.resume_from`) first.
    `callbacks` join those the config names (a sweep's trial reports to Optuna with one).
    """
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    datamodule, module, trainer = instantiate_all(cfg, callbacks)
    start_run(cfg, trainer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    val_best = trainer.callback_metrics.get("val/acc_best")  # testing replaces callback_metrics
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    return finish(cfg, trainer, module, datamodule, best, val_best)


def save_insights(final_dir: Path, net: torch.nn.Module, test_set) -> None:
    """Beside the model's files: each conv channel's top test patches (`convlens.top_patches`,
    with a grid per layer among the evaluation pictures) and the fixed test sample the served
    embedding map is drawn for (`convlens.embedding`)."""
    folder = model_dir(final_dir)
    top_patches.write(net, test_set.images, folder, final_dir / EVALUATION_DIR)
    Sample.of(test_set.images, test_set.labels).save(folder)


def finish(
    cfg: DictConfig,
    trainer: Trainer,
    module: Classifier,
    datamodule: LightningDataModule,
    best: str,
    val_best: torch.Tensor | None,
) -> TrainResult | None:
    """Write the end of the run locally, then log it (evaluation, model) to MLflow; if the
    server has gone, leave it in the outbox for `python -m pipelines.upload`."""
    logger = mlflow_logger(trainer)
    if not trainer.is_global_zero or logger is None:
        return None
    best_net = net_from_checkpoint(best) if best else module.net.cpu().eval()
    final_dir = Path(cfg.paths.output_dir, "final").resolve()
    result = TrainResult(
        run_id=logger.run_id,
        experiment_id=logger.experiment_id,
        tracking_uri=cfg.logger.mlflow.tracking_uri,
        test_acc=float(trainer.callback_metrics["test/acc"]),
        val_acc_best=float(val_best) if val_best is not None else float("nan"),
        epochs=trainer.current_epoch,
        best_checkpoint=best,
        final_dir=str(final_dir),
        weights_sha256=save_final(final_dir, best_net, datamodule.test_set),
    )
    save_insights(final_dir, best_net, datamodule.test_set)
    if logger.deliver(force=True):
        try:
            return replace(
                result, model_uri=publish_final(result.tracking_uri, result.run_id, final_dir)
            )
        except Exception as error:  # the server went away between the two calls
            logger.record_failure(error)
    logger.outbox.persist(
        run_id=result.run_id,
        tracking_uri=result.tracking_uri,
        final_dir=result.final_dir,
        test_acc=result.test_acc,
        epochs=result.epochs,
        weights_sha256=result.weights_sha256,
        registry=OmegaConf.to_container(cfg.registry, resolve=True),
    )
    return replace(result, unlogged_dir=str(logger.outbox.folder))
