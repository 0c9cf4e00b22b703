"""The Hydra config every command shares, and the handful of facts the release steps read from it.

`make train` composes `conf/train.yaml` through `@hydra.main`; the other steps (evaluate,
register, package, serve, the sweep report) compose the very same config with Hydra's compose
API, so an override such as `registry.name=...` or `logger.mlflow.experiment_name=...` means
the same thing to every step. `Settings` is what those steps need of it, checked once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from convlens import UserError

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
CONFIG_NAME = "train"
POLICIES = ("always", "better", "never")  # registry.promote


# `data.feedback_holdout` (conf/data/mnist.yaml) where a config lacks it: a run's recorded config
# from before the key existed, or a data module built without Hydra.
FEEDBACK_HOLDOUT_EVERY = 5


class ConfigError(UserError):
    """An override or a config value that cannot be used; the message names it."""


@dataclass(frozen=True)
class FeedbackGate:
    """`registry.feedback_*`: how far a challenger may fall below the champion on the feedback
    hold-out, from how many held-out digits that comparison counts, and where those digits
    are (the store, and the 1-in-`every` rule that keeps them out of training)."""

    max_drop: float
    min_holdout: int
    store_url: str | None = None
    every: int = FEEDBACK_HOLDOUT_EVERY

    @classmethod
    def of(cls, registry: Mapping[str, Any]) -> FeedbackGate | None:
        """From the `registry` config (or a run's copy of it); None when it has no gate keys."""
        if "feedback_max_drop" not in registry:
            return None
        return cls(
            float(registry["feedback_max_drop"]),
            int(registry["feedback_min_holdout"]),
            registry.get("feedback_url") or None,
            int(registry.get("feedback_holdout", FEEDBACK_HOLDOUT_EVERY)),
        )


@dataclass(frozen=True)
class Settings:
    """The names and places a release step works with, as the config resolves them."""

    tracking_uri: str
    experiment: str
    model_name: str
    policy: str
    registry_enabled: bool
    data_root: str
    test_subset: int | None
    bentoml_home: str
    mlflow_ui: str
    feedback_gate: FeedbackGate | None = None  # None: a registry config without the keys

    @classmethod
    def of(cls, cfg: DictConfig) -> Settings:
        """Read from a composed config, refusing an unknown promotion policy."""
        policy = str(cfg.registry.promote)
        if cfg.registry.enabled and policy not in POLICIES:
            raise ConfigError(
                f"registry.promote must be one of {', '.join(POLICIES)}, got {policy!r}"
            )
        mlflow_cfg = (cfg.get("logger") or {}).get("mlflow") or {}
        return cls(
            tracking_uri=str(mlflow_cfg.get("tracking_uri") or cfg.paths.tracking_uri),
            experiment=str(mlflow_cfg.get("experiment_name") or ""),  # "": no MLflow logger
            model_name=str(cfg.registry.name),
            policy=policy,
            registry_enabled=bool(cfg.registry.enabled),
            data_root=str(cfg.data.root),
            test_subset=cfg.data.get("test_subset"),
            bentoml_home=str(Path(cfg.paths.bentoml_home).resolve()),
            mlflow_ui=str(cfg.paths.mlflow_ui).rstrip("/"),
            feedback_gate=FeedbackGate.of(cfg.registry),
        )

    def use_bentoml_home(self) -> None:
        """Point BentoML at this home; must run before `bentoml` is first imported."""
        os.environ["BENTOML_HOME"] = self.bentoml_home
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """`conf/train.yaml` with command-line style overrides, as `make train` would see it.

    Hydra's run-time values exist here too (`paths.root_dir` is the working directory), except
    the output folder, which only a training run creates.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        # A sweep's value lists (`make sweep ARGS=...`) choose nothing for one step: left out.
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        single = [override.input_line for override in parsed if not override.is_sweep_override()]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(CONFIG_NAME, single, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(" ".join(str(error).split())) from None
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.cwd}
    return cfg


def settings(overrides: Sequence[str] = ()) -> Settings:
    return Settings.of(compose(overrides))
