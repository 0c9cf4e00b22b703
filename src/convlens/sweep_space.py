"""A sweep's search space, written in Hydra's override syntax, as Optuna distributions.

`conf/hparams_search/*.yaml` lists the dimensions under `sweep.params`, one per config path:

    optimizer.lr: tag(log, interval(3e-4, 1e-2))     -> FloatDistribution(log=True)
    data.batch_size: choice(32, 64, 128)             -> CategoricalDistribution
    model.layers.conv1.out_channels: range(8, 65, 8) -> IntDistribution(step=8)

Layers are named, as `conf/model/*.yaml` names them (`conv1`), never by list position: the
name is resolved against the composed model, so one space fits every architecture that has a
`conv1`. A sampled value becomes the plain override `make train` takes
(`model.layers.0.out_channels=32`), which is what a trial records and reruns with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from convlens.config import ConfigError

LAYERS = "model.layers."


@dataclass(frozen=True)
class Dimension:
    """One searched setting: its name in the study, its distribution, the key it overrides."""

    name: str  # as written in the search space, e.g. model.layers.conv1.out_channels
    distribution: BaseDistribution
    key: str  # the Hydra override key, e.g. model.layers.0.out_channels

    def override(self, value: Any) -> str:
        return f"{self.key}={format_value(value)}"


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back to the same value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def distribution(name: str, expression: str) -> BaseDistribution:
    """`choice(...)`, `range(...)`, `interval(...)`, optionally `tag(log, ...)`, as Optuna's."""
    try:
        parsed = OverridesParser.create().parse_override(f"{name}={expression}")
        value = parsed.value()
    except HydraException as error:
        raise ConfigError(f"sweep.params.{name}: {' '.join(str(error).split())}") from None
    if isinstance(value, ChoiceSweep):
        if "log" in value.tags:
            raise ConfigError(f"sweep.params.{name}: a choice cannot be log-scaled")
        return CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        ints = all(isinstance(v, int) for v in (value.start, value.stop, value.step))
        if not ints or value.step <= 0 or value.stop <= value.start:
            raise ConfigError(f"sweep.params.{name}: range needs ints with start < stop, step > 0")
        last = value.start + (value.stop - 1 - value.start) // value.step * value.step
        return IntDistribution(value.start, last, log="log" in value.tags, step=value.step)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if value.start >= value.end or (log and value.start <= 0):
            raise ConfigError(f"sweep.params.{name}: interval needs 0 < start < end for log")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(
        f"sweep.params.{name}: {expression!r} is one value, not a range: use choice(...), "
        "range(...) or interval(...), or a plain override for a fixed value"
    )


def override_key(name: str, model: DictConfig) -> str:
    """`model.layers.<layer name>.<field>` -> `model.layers.<index>.<field>` for this model."""
    if not name.startswith(LAYERS):
        return name
    layer, _, field = name.removeprefix(LAYERS).partition(".")
    layers = model.get("layers")
    names = [str(spec.get("name")) for spec in layers] if isinstance(layers, ListConfig) else []
    if layer not in names:
        raise ConfigError(
            f"sweep.params.{name}: the model has no layer {layer!r} "
            f"(its layers: {', '.join(names) or 'none'}); name layers, not list positions"
        )
    if not field:
        raise ConfigError(f"sweep.params.{name}: name a field of layer {layer!r}")
    return f"{LAYERS}{names.index(layer)}.{field}"


def split_overrides(overrides: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """A command line's fixed overrides, and its sweep overrides (`key=choice(...)`) that add
    to or replace dimensions of the search space."""
    fixed: list[str] = []
    swept: dict[str, str] = {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(" ".join(str(error).split())) from None
    for override in parsed:
        if override.is_sweep_override():
            key = override.key_or_group
            swept[key] = override.input_line.split("=", 1)[1]
        else:
            fixed.append(override.input_line)
    return fixed, swept


def search_space(params: Mapping[str, Any], model: DictConfig) -> list[Dimension]:
    """The dimensions of `sweep.params`, in the order written, resolved against `model`."""
    if not params:
        raise ConfigError("sweep.params is empty: name at least one setting to search")
    return [
        Dimension(str(name), distribution(str(name), str(expr)), override_key(str(name), model))
        for name, expr in params.items()
    ]


def trial_overrides(space: list[Dimension], values: Mapping[str, Any]) -> list[str]:
    """The overrides of one sampled point, in the order of the space."""
    return [dim.override(values[dim.name]) for dim in space]
