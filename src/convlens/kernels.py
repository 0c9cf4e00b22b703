"""The tutorial's building blocks by hand: a convolution, ReLU and max pooling in numpy.

These reproduce the tutorial's worked examples exactly, so a learner can check the arithmetic,
and the web page applies them to the user's own digit.
"""

from __future__ import annotations

import numpy as np

KERNELS: dict[str, np.ndarray] = {
    "horizontal_edge": np.array([[-1, -1, -1], [0, 0, 0], [1, 1, 1]], dtype=np.float32),
    "vertical_edge": np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], dtype=np.float32),
    "blur": np.full((3, 3), 1 / 9, dtype=np.float32),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32),
}


def convolve2d(image: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """Slide `kernel` over `image` with no padding, as a CNN layer does (no kernel flip)."""
    image = np.asarray(image, dtype=np.float32)
    kh, kw = kernel.shape
    windows = np.lib.stride_tricks.sliding_window_view(image, (kh, kw))[::stride, ::stride]
    return np.einsum("ijkl,kl->ij", windows, kernel)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def max_pool(x: np.ndarray, size: int = 2, stride: int | None = None) -> np.ndarray:
    """Largest value of each `size` x `size` window; windows that do not fit are dropped."""
    stride = stride or size
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(x), (size, size))
    return windows[::stride, ::stride].max(axis=(-2, -1))
