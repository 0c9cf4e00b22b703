"""How pixels become model input: the one place training and serving agree on it.

Training sees MNIST, which is already 28x28, centred, white-on-black. Serving sees whatever a
person uploads, so `to_mnist` redoes the steps LeCun et al. used to make MNIST from scanned
digits, and both paths end in the same `normalize`. Before those steps, `convlens.ink` finds
the digit in the upload: in a clean image that is every mark on a flat background; in a phone
photo of paper it is the main strokes, once uneven light, texture, specks, ruled lines and the
page's edge are told apart from them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from convlens.ink import NoDigitError, digit_ink

__all__ = ["DIGIT_BOX", "IMAGE_SIZE", "INPUT_SHAPE", "NoDigitError", "normalize", "to_mnist"]

IMAGE_SIZE = 28
DIGIT_BOX = 20
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
INPUT_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Turn a batch of uint8 (0-255) or float (0-1) images into normalized float32 NCHW.

    Accepts (N, 28, 28) or (N, 1, 28, 28), so data loaders can keep uint8 in memory and pay for
    the float conversion once per batch.
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    return images.sub(MNIST_MEAN).div_(MNIST_STD)


def to_mnist(image: Image.Image) -> np.ndarray:
    """Make a real-world digit look like an MNIST digit: uint8 (28, 28), white on black.

    Find the digit's ink (`convlens.ink.digit_ink`: white on black, 0-1, nothing else), crop
    to it, scale its longer side to 20 px keeping the aspect ratio, and place it in 28x28 with
    its centre of mass at the centre.
    """
    ink = digit_ink(image)
    rows = np.flatnonzero((ink > 0.1).any(axis=1))
    cols = np.flatnonzero((ink > 0.1).any(axis=0))
    if rows.size == 0:  # a few dim specks: the photo path found strokes too faint to crop to
        raise NoDigitError("the image has no digit: its marks are too faint")
    digit = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray((digit * 255).astype(np.uint8)).resize(size, Image.LANCZOS)
    digit = np.asarray(resized, dtype=np.float32)

    total = digit.sum()
    if total == 0:  # specks so small or far apart that nothing survives the resize
        raise NoDigitError("the image has no digit: its marks vanish at 20 px")
    ys, xs = np.indices(digit.shape)
    cy, cx = (ys * digit).sum() / total, (xs * digit).sum() / total
    # MNIST puts the centre of mass at pixel index 14 (not 13.5): matching it keeps uploads
    # pixel-aligned with the training data.
    top = int(np.clip(round(IMAGE_SIZE / 2 - cy), 0, IMAGE_SIZE - digit.shape[0]))
    left = int(np.clip(round(IMAGE_SIZE / 2 - cx), 0, IMAGE_SIZE - digit.shape[1]))

    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas.round().clip(0, 255).astype(np.uint8)
