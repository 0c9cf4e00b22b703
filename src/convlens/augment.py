"""How people draw differently from MNIST's writers, as random changes to training batches.

People send digits thicker or thinner than MNIST's pen (stroke), leaning (slant), smaller or
larger in their 20 px box (scale) and off-centre (position). Each change works on a whole
normalized NCHW batch at once, with its own random draw per image: torchvision's
`transforms.v2.RandomAffine` draws one set of parameters per call, so on a batch every image
would lean the same way, and calling it per image costs a Python loop per step. The
deterministic functions (`dilate`, `erode`, `stroke`, `affine`) take explicit amounts, so
tests can check each does what it says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from convlens.preprocessing import MNIST_MEAN, MNIST_STD

BACKGROUND = -MNIST_MEAN / MNIST_STD  # a blank (0) pixel after `normalize`


def dilate(images: torch.Tensor) -> torch.Tensor:
    """Each pixel becomes the brightest of its 3x3 neighbourhood: strokes 2 px thicker."""
    return F.max_pool2d(images, kernel_size=3, stride=1, padding=1)


def erode(images: torch.Tensor) -> torch.Tensor:
    """Each pixel becomes the darkest of its 3x3 neighbourhood: strokes 2 px thinner."""
    return -F.max_pool2d(-images, kernel_size=3, stride=1, padding=1)


def stroke(images: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Per image, blend toward the dilation (amount > 0, up to 1) or the erosion (< 0).

    A blend, not a full 3x3 step: MNIST strokes are 2-3 px wide, so a full erosion would wipe
    out many of them; a partial one thins them the way a finer pen does."""
    a = amount.view(-1, 1, 1, 1).to(images)
    thicker = images + a.clamp(min=0) * (dilate(images) - images)
    return thicker + (-a).clamp(min=0) * (erode(images) - images)


def affine(
    images: torch.Tensor,
    slant_degrees: torch.Tensor,
    scale: torch.Tensor,
    shift_pixels: torch.Tensor,
) -> torch.Tensor:
    """Per image: lean by a horizontal shear (positive: the top moves right), scale about
    the centre, then move by (dx, dy) pixels; one resampling for all three."""
    n, _, height, width = images.shape
    shear = torch.tan(torch.deg2rad(slant_degrees.float()))
    k = scale.float()
    # affine_grid maps output to input coordinates (y grows downwards): the inverse of
    # "scale by k, then shear x by -shear*y, then move", in [-1, 1] units.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / k
    theta[:, 0, 1] = shear / k
    theta[:, 1, 1] = 1 / k
    move = shift_pixels.float() * 2 / torch.tensor([width, height])
    theta[:, 0, 2] = -(move[:, 0] + shear * move[:, 1]) / k
    theta[:, 1, 2] = -move[:, 1] / k
    grid = F.affine_grid(theta.to(images), [n, 1, height, width], align_corners=False)
    moved = F.grid_sample(images - BACKGROUND, grid, align_corners=False, padding_mode="zeros")
    return moved + BACKGROUND


@dataclass(frozen=True)
class Augmentations:
    """How far each random change may go; 0 turns that one off (conf/data: `augmentations`).

    shift: pixels along each axis. scale: relative, 0.15 draws 85%-115%. slant: degrees of
    shear either way. stroke: 0-1, how far toward a 3x3 dilation or erosion."""

    shift: float = 0.0
    scale: float = 0.0
    slant: float = 0.0
    stroke: float = 0.0

    @classmethod
    def of(cls, settings: Mapping[str, Any] | None) -> Augmentations:
        return cls(**{key: float(value) for key, value in (settings or {}).items()})

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        n = images.shape[0]

        def uniform(limit: float, *shape: int) -> torch.Tensor:
            return (torch.rand(n, *shape, generator=generator) * 2 - 1) * limit

        if self.stroke:
            images = stroke(images, uniform(self.stroke))
        if self.shift or self.scale or self.slant:
            images = affine(
                images,
                slant_degrees=uniform(self.slant),
                scale=1 + uniform(self.scale),
                shift_pixels=uniform(self.shift, 2),
            )
        return images

    def describe(self) -> dict[str, float]:
        return {
            "shift": self.shift,
            "scale": self.scale,
            "slant": self.slant,
            "stroke": self.stroke,
        }
