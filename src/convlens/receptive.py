"""How one value of a feature map comes about: where it looks on the input, and its arithmetic.

The geometry comes from the architecture itself (`ConvNet.architecture`): unpadded convolutions
with stride 1 and pooling whose stride is its window, walked back from the layer to the input,
so a different architecture in `conf/model/` gets its own receptive fields. The arithmetic uses
the network's own weights and its own activations (`convlens.model.activations`), and the
value it reports is the layer's output, so it is the number `/feature_maps` shows.

Conv layers carry their ReLU (`convlens.model.Conv`): a conv layer's output is after the ReLU,
so the computation shows the sum (weights, inputs, bias) and then the ReLU that gives the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convlens.model import ConvNet, activations
from convlens.preprocessing import normalize

TOP_CONTRIBUTIONS = 8


class OutsideLayer(ValueError):
    """A channel or position that the layer's output does not have."""


@dataclass(frozen=True)
class Field:
    """Rows [top, top + size) and columns [left, left + size) of the input."""

    top: int
    left: int
    size: int

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "left": self.left, "height": self.size, "width": self.size}


def _spatial(spec: dict[str, Any]) -> tuple[int, int]:
    """(kernel, stride) of a layer that slides a window; conv strides 1, pooling its window."""
    kernel = int(spec["kernel_size"])
    return kernel, (1 if spec["type"] == "conv" else kernel)


def _layers_up_to(net: ConvNet, layer: str) -> list[dict[str, Any]]:
    specs = net.architecture["layers"]
    names = [spec["name"] for spec in specs]
    if layer not in net.spatial_layer_names():
        raise OutsideLayer(f"{layer!r} is not a conv or pooling layer of this model")
    return specs[: names.index(layer) + 1]


def receptive_field(net: ConvNet, layer: str, y: int, x: int) -> Field:
    """The input pixels that output pixel (y, x) of `layer` depends on."""
    top, left, size = y, x, 1
    for spec in reversed(_layers_up_to(net, layer)):
        kernel, stride = _spatial(spec)
        top, left, size = top * stride, left * stride, (size - 1) * stride + kernel
    return Field(top, left, size)


def receptive_field_size(net: ConvNet, layer: str) -> int:
    return receptive_field(net, layer, 0, 0).size


def _previous(net: ConvNet, layer: str) -> str | None:
    names = net.layer_names
    index = names.index(layer)
    return names[index - 1] if index else None


def _rounded(values: torch.Tensor) -> list:
    return values.double().tolist()


def explain_value(
    net: ConvNet, image: torch.Tensor, layer: str, channel: int, y: int, x: int
) -> dict[str, Any]:
    """Output (channel, y, x) of `layer` for one digit `image` (uint8 0-255, (28, 28)), with
    its receptive field on the input and the computation that gives it, from its inputs."""
    specs = _layers_up_to(net, layer)
    spec = specs[-1]
    previous = _previous(net, layer)
    wanted = [layer] + ([previous] if previous else [])
    with torch.inference_mode():
        pixels = normalize(image.reshape(1, *image.shape[-2:]))
        outputs = activations(net, pixels, wanted)
    output = outputs[layer][0]
    channels, height, width = output.shape
    if not (0 <= channel < channels and 0 <= y < height and 0 <= x < width):
        raise OutsideLayer(
            f"{layer} has channels 0-{channels - 1} and positions y 0-{height - 1}, "
            f"x 0-{width - 1}: ({channel}, {y}, {x}) is outside it"
        )
    source = outputs[previous][0] if previous else pixels[0]
    kernel, stride = _spatial(spec)
    top, left = y * stride, x * stride
    window = source[:, top : top + kernel, left : left + kernel]
    answer: dict[str, Any] = {
        "layer": layer,
        "channel": channel,
        "y": y,
        "x": x,
        "type": spec["type"],
        "value": float(output[channel, y, x]),
        "field": receptive_field(net, layer, y, x).as_dict(),
        "input": previous or "input",
        "input_window": {"top": top, "left": left, "height": kernel, "width": kernel},
    }
    if spec["type"] == "maxpool":
        patch = window[channel]
        index = int(patch.argmax())
        answer["pool"] = {
            "window": _rounded(patch),
            "max": float(patch.max()),
            "argmax": {"y": top + index // kernel, "x": left + index % kernel},
        }
    else:
        answer["conv"] = _conv_arithmetic(getattr(net, layer), window, channel, previous is None)
        if previous is None:  # the raw pixels too, to follow them through `normalize`
            raw = image.reshape(image.shape[-2:])[top : top + kernel, left : left + kernel]
            answer["conv"]["pixels"] = raw.tolist()
    return answer


def _conv_arithmetic(
    conv: torch.nn.Conv2d, window: torch.Tensor, channel: int, on_input: bool
) -> dict[str, Any]:
    """sum over input channels of (kernel * patch), plus the bias, then the layer's ReLU."""
    kernel = conv.weight[channel].detach().double()
    patch = window.double()
    per_channel = (kernel * patch).sum(dim=(1, 2))
    bias = float(conv.bias[channel].detach()) if conv.bias is not None else 0.0
    total = float(per_channel.sum()) + bias
    relu = isinstance(getattr(conv, "activation", None), torch.nn.ReLU)
    arithmetic: dict[str, Any] = {
        "bias": bias,
        "sum": total,
        "activation": "relu" if relu else "none",
        "result": max(total, 0.0) if relu else total,
        "in_channels": int(kernel.shape[0]),
    }
    if on_input:
        arithmetic["patch"] = _rounded(patch[0])
        arithmetic["kernel"] = _rounded(kernel[0])
        return arithmetic
    order = per_channel.abs().argsort(descending=True)[:TOP_CONTRIBUTIONS]
    arithmetic["contributions"] = [
        {
            "in_channel": int(i),
            "contribution": float(per_channel[i]),
            "patch": _rounded(patch[i]),
            "kernel": _rounded(kernel[i]),
        }
        for i in order
    ]
    arithmetic["rest"] = float(per_channel.sum() - per_channel[order].sum())
    return arithmetic
