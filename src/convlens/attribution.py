"""Why the network chose a class: attribution maps over the 28x28 input, computed by Captum.

Every method answers the same question, "which pixels raised (or lowered) the score of this
class?", as one signed value per input pixel: positive is evidence for the class, negative is
evidence against. Attributions are taken with respect to pixel intensities in [0, 1] (the
model is run on `normalize` of them, the one home of normalization), against the logit of the
class (softmax saturates and would hide evidence on confident digits), with a black image as
the baseline for Integrated Gradients and Occlusion, since black is MNIST's "no ink".

Captum's layer methods hook the layer they explain, and the hook sees every forward pass of
that module, from any thread. A served network is shared by the threads of a worker, so
`attribute` runs on a private copy (`private_copy`), never on the network it is given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from torch import nn

from convlens.model import ConvNet
from convlens.preprocessing import IMAGE_SIZE, MNIST_MEAN, normalize

Method = Literal["integrated_gradients", "saliency", "grad_cam", "occlusion"]
METHODS: dict[str, type] = {
    "integrated_gradients": IntegratedGradients,
    "saliency": Saliency,
    "grad_cam": LayerGradCam,
    "occlusion": Occlusion,
}
DESCRIPTIONS = {
    "integrated_gradients": "gradients integrated along the path from a black image "
    "(Sundararajan et al. 2017)",
    "saliency": "the signed gradient of the class score at the digit (Simonyan et al. 2013)",
    "grad_cam": "the last conv layer's activations weighted by their mean gradient, "
    "upsampled to 28x28 (Selvaraju et al. 2017)",
    "occlusion": "how much the class score drops when a 4x4 patch is blacked out "
    "(Zeiler and Fergus 2014)",
}
IG_STEPS = 64
IG_BASELINE = MNIST_MEAN
OCCLUSION_WINDOW = (1, 4, 4)
OCCLUSION_STRIDES = (1, 2, 2)
OCCLUSION_BATCH = 64  # occluded copies per forward pass: 169 windows in 3 passes, not 169


class UnknownMethod(ValueError):
    """An attribution method that is not one of `METHODS`."""


class PixelModel(nn.Module):
    """The network as a function of pixel intensities in [0, 1]: `net(normalize(x))`."""

    def __init__(self, net: ConvNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(normalize(pixels))


def private_copy(net: ConvNet) -> ConvNet:
    """A copy of `net` for one attribution: its own modules (so Captum's hooks see only this
    computation) and parameters that need no gradient (only the input's is wanted)."""
    twin = copy.deepcopy(net).eval()
    for parameter in twin.parameters():
        parameter.requires_grad_(False)
    return twin


def last_conv_layer(net: ConvNet) -> str:
    return net.conv_layer_names()[-1]


def _as_pixels(image: torch.Tensor) -> torch.Tensor:
    """uint8 0-255 or float 0-1, (28, 28), (1, 28, 28) or (1, 1, 28, 28) -> float (1, 1, 28, 28)."""
    pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return pixels.reshape(1, 1, IMAGE_SIZE, IMAGE_SIZE).clone()


def attribute(net: ConvNet, image: torch.Tensor, target: int, method: str) -> torch.Tensor:
    """The (28, 28) map of `method`'s evidence for class `target` in one digit `image`
    (uint8 0-255 or float 0-1). Positive: evidence for the class; negative: against it."""
    if method not in METHODS:
        raise UnknownMethod(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    model = PixelModel(private_copy(net))
    pixels = _as_pixels(image)
    if method != "occlusion":  # gradient methods; Captum would set it and warn
        pixels.requires_grad_()
    baseline = torch.full_like(pixels, IG_BASELINE)
    run: dict[str, Callable[[], torch.Tensor]] = {
        "integrated_gradients": lambda: IntegratedGradients(model).attribute(
            pixels, baselines=baseline, target=target, n_steps=IG_STEPS
        ),
        "saliency": lambda: Saliency(model).attribute(pixels, target=target, abs=False),
        "grad_cam": lambda: LayerAttribution.interpolate(
            LayerGradCam(model, getattr(model.net, last_conv_layer(net))).attribute(
                pixels, target=target
            ),
            (IMAGE_SIZE, IMAGE_SIZE),
            interpolate_mode="bilinear",
        ),
        "occlusion": lambda: Occlusion(model).attribute(
            pixels,
            sliding_window_shapes=OCCLUSION_WINDOW,
            strides=OCCLUSION_STRIDES,
            baselines=0.0,
            target=target,
            perturbations_per_eval=OCCLUSION_BATCH,
        ),
    }
    with torch.enable_grad():  # whatever the calling thread's mode (serving infers without)
        return run[method]().detach().reshape(IMAGE_SIZE, IMAGE_SIZE)


def logits(net: ConvNet, image: torch.Tensor) -> torch.Tensor:
    """The class scores (logits) of one digit, as the attributions explain them."""
    with torch.inference_mode():
        return PixelModel(net)(_as_pixels(image))[0]
