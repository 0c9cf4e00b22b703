"""Every option of every config group composes and instantiates."""

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from convlens.training import build_trainer
from tests.conftest import REPO

CONF = REPO / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
# Groups conf/train.yaml lists; the others (sweep/) come in through another option, and alone
# are added with `+group=option`.
LISTED = {
    next(iter(d))
    for d in yaml.safe_load((CONF / "train.yaml").read_text())["defaults"]
    if isinstance(d, dict)
}


def composed(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    return cfg


def test_every_group_has_options():
    expected = {"data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks"}
    assert expected <= {g for g, _ in OPTIONS}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(tmp_path, group, option):
    cfg = composed(tmp_path, f"{'' if group in LISTED else '+'}{group}={option}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert OmegaConf.to_container(cfg.trainer, resolve=True)["accelerator"] == "gpu"
        pytest.skip("composes and resolves; instantiating a GPU trainer needs a GPU")
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, _convert_="all")
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = instantiate(cfg.module, net=net, optimizer=optimizer, scheduler=scheduler)
    trainer = build_trainer(cfg)
    assert datamodule.hparams.batch_size > 0
    assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert trainer.max_epochs >= 1


def test_default_config_trains_five_epochs_with_adam_and_one_cycle(tmp_path):
    cfg = composed(tmp_path)
    assert cfg.trainer.max_epochs == 5
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.scheduler.max_lr == cfg.optimizer.lr


def test_data_root_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLENS_DATA_DIR", "/somewhere/else")
    assert composed(tmp_path).data.root == "/somewhere/else"


def test_tracking_uri_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.logger.mlflow.tracking_uri == "http://127.0.0.1:5999"


def test_every_step_composes_the_training_config_with_its_overrides(tmp_path, monkeypatch):
    from convlens.config import settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    found = settings(["registry.name=digits", "logger.mlflow.experiment_name=trial"])
    assert (found.model_name, found.experiment) == ("digits", "trial")
    assert found.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_a_sweeps_value_lists_choose_nothing_for_one_step():
    from convlens.config import settings

    found = settings(["optimizer.lr=1e-3,3e-4", "data.batch_size=choice(32,64)", "seed=7"])
    assert found.policy == "better"  # composed, the sweep's lists left out


def test_an_unknown_promotion_policy_is_refused_once_for_every_step():
    from convlens.config import ConfigError, settings

    with pytest.raises(ConfigError, match="registry.promote must be one of"):
        settings(["registry.promote=sometimes"])
