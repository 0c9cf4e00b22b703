"""Carrying on after a crash: find the run to resume (`convlens.callbacks.CheckpointOnStop`
writes the checkpoint when asked to stop).

Each run records where its checkpoints live (`convlens.checkpoint_dir`), so `resume=<run id>`
or `resume=latest` can pick up the last checkpoint and keep logging into the same MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from omegaconf import DictConfig, open_dict

from convlens import UserError

CHECKPOINT_DIR_TAG = "convlens.checkpoint_dir"
LAST = "last.ckpt"


class ResumeError(UserError):
    """Nothing to resume; the message says what was looked for."""


@dataclass(frozen=True)
class Resumable:
    run_id: str
    checkpoint_dir: str
    checkpoint: str


def find_resumable(tracking_uri: str, experiment_name: str, which: str) -> Resumable:
    """The run `which` names (a run id, or `latest` for the newest unfinished run)."""
    client = MlflowClient(tracking_uri)
    if which == "latest":
        experiment = client.get_experiment_by_name(experiment_name)
        runs = (
            client.search_runs(
                [experiment.experiment_id],
                filter_string="attributes.status != 'FINISHED'",
                order_by=["attributes.start_time DESC"],
            )
            if experiment
            else []
        )
        candidates = [r for r in runs if _last_checkpoint(r.data.tags.get(CHECKPOINT_DIR_TAG))]
        if not candidates:
            raise ResumeError(
                f"resume=latest: no unfinished run with a checkpoint in experiment "
                f"{experiment_name!r}; start a new run without resume="
            )
        run = candidates[0]
    else:
        try:
            run = client.get_run(which)
        except Exception:
            raise ResumeError(f"resume={which}: no such MLflow run in {tracking_uri}") from None
        if run.info.status == "FINISHED":
            raise ResumeError(f"resume={which}: that run already finished; nothing to resume")
    folder = run.data.tags.get(CHECKPOINT_DIR_TAG)
    checkpoint = _last_checkpoint(folder)
    if checkpoint is None:
        raise ResumeError(f"resume={run.info.run_id}: no {LAST} in {folder}")
    return Resumable(run.info.run_id, folder, str(checkpoint))


def resume_from(cfg: DictConfig) -> None:
    """Point the config at the run `cfg.resume` names, if any: its MLflow run, checkpoints
    and last.ckpt. Needs MLflow only, so `make train` and `make release` tell what cannot be
    resumed before they import Lightning."""
    if not cfg.get("resume"):
        return
    mlflow_cfg = cfg.logger.mlflow
    found = find_resumable(mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name, cfg.resume)
    with open_dict(cfg):
        cfg.logger.mlflow.run_id = found.run_id
        cfg.callbacks.model_checkpoint.dirpath = found.checkpoint_dir
        cfg.ckpt_path = found.checkpoint


def _last_checkpoint(folder: str | None) -> Path | None:
    path = Path(folder, LAST) if folder else None
    return path if path is not None and path.is_file() else None
