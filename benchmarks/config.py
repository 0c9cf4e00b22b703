"""The training config exactly as `make train` composes it, for the reference loops."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from benchmarks.common import REPO, data_root


def train_config(*overrides: str) -> DictConfig:
    """`conf/train.yaml` with Hydra overrides, minus the `hydra:` resolvers a job would fill."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.root_dir = str(REPO)
        cfg.paths.output_dir = "/tmp/convlens-bench"
        cfg.data.root = data_root()
    return cfg
