"""Preprocessing: normalization shared with training, and real-world images made MNIST-like."""

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.preprocessing import MNIST_MEAN, MNIST_STD, NoDigitError, normalize, to_mnist


def digit_stroke(size: int = 200) -> np.ndarray:
    """A thick '1'-like bar, white on black, off-centre."""
    image = np.zeros((size, size), dtype=np.uint8)
    image[size // 5 : size // 2, size // 8 : size // 8 + size // 12] = 255
    return image


def test_normalize_accepts_uint8_and_float_alike():
    raw = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    assert torch.allclose(normalize(raw), normalize(raw.float() / 255))


def test_normalize_returns_nchw_with_training_constants():
    out = normalize(torch.full((2, 28, 28), 255, dtype=torch.uint8))
    assert out.shape == (2, 1, 28, 28)
    assert torch.allclose(out, torch.tensor((1 - MNIST_MEAN) / MNIST_STD))


def test_to_mnist_fits_the_digit_in_a_20_pixel_box():
    out = to_mnist(Image.fromarray(digit_stroke()))
    rows = np.flatnonzero(out.any(axis=1))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert rows[-1] - rows[0] + 1 == 20


def test_to_mnist_centres_the_centre_of_mass():
    out = to_mnist(Image.fromarray(digit_stroke())).astype(float)
    ys, xs = np.indices(out.shape)
    cy, cx = (ys * out).sum() / out.sum(), (xs * out).sum() / out.sum()
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_to_mnist_inverts_a_light_background():
    dark_on_light = 255 - digit_stroke()
    assert np.array_equal(
        to_mnist(Image.fromarray(dark_on_light)), to_mnist(Image.fromarray(digit_stroke()))
    )


def test_to_mnist_reads_ink_from_transparency():
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[..., 3] = digit_stroke(100)  # black strokes on a transparent canvas
    out = to_mnist(Image.fromarray(rgba, mode="RGBA"))
    assert out.max() == 255 and out[0].max() == 0


def test_to_mnist_leaves_mnist_digits_as_they_are(mnist_root):
    from torchvision.datasets import MNIST

    digits = MNIST(str(mnist_root), train=False).data[:200].numpy()
    unchanged = [np.array_equal(to_mnist(Image.fromarray(d)), d) for d in digits]
    diffs = [np.abs(to_mnist(Image.fromarray(d)).astype(int) - d).mean() for d in digits]
    assert np.mean(unchanged) > 0.5 and np.mean(diffs) < 3


def test_specks_that_vanish_when_scaled_down_are_no_digit():
    image = np.zeros((4000, 4000), dtype=np.uint8)
    image[0, 0] = image[-1, -1] = 255
    with pytest.raises(NoDigitError):
        to_mnist(Image.fromarray(image))


def test_a_few_dim_specks_are_no_digit():
    image = np.zeros((6, 19), dtype=np.uint8)  # found by Hypothesis: it used to raise IndexError
    image[0, 0], image[0, 10], image[1, 4], image[5, 8], image[5, 15] = 58, 51, 82, 51, 51
    with pytest.raises(NoDigitError, match="too faint"):
        to_mnist(Image.fromarray(image))


def test_blank_image_has_no_digit():
    with pytest.raises(NoDigitError):
        to_mnist(Image.new("L", (50, 50), 255))


def paper_under_a_shadow(ink: np.ndarray) -> np.ndarray:
    """`ink` (white on black, 0-255) as grey ink on paper lit from the left: the paper's right
    side (0.35) is darker than the ink on its left (0.45)."""
    h, w = ink.shape
    light = np.linspace(1.0, 0.35, w)[None, :].repeat(h, axis=0)
    rng = np.random.default_rng(0)
    paper = light * (1 - 0.55 * ink / 255) + rng.normal(0, 0.01, (h, w))
    return (np.clip(paper, 0, 1) * 255).astype(np.uint8)


def test_to_mnist_reads_ink_under_a_shadow_as_on_a_flat_page():
    digit = np.zeros((300, 400), np.uint8)
    digit[60:240, 60:100] = 255  # the bar, on the bright side
    seen = to_mnist(Image.fromarray(paper_under_a_shadow(digit))).astype(float)
    clean = to_mnist(Image.fromarray(digit)).astype(float)
    assert np.corrcoef(seen.ravel(), clean.ravel())[0, 1] > 0.9


def test_to_mnist_leaves_a_ruled_line_across_the_page_out_of_the_digit():
    digit = np.zeros((300, 400), np.uint8)
    digit[60:240, 180:220] = 255
    lined = digit.copy()
    lined[270:273, :] = 200  # a ruled line under the digit, across the page
    seen = to_mnist(Image.fromarray(paper_under_a_shadow(lined))).astype(float)
    clean = to_mnist(Image.fromarray(digit)).astype(float)
    assert np.corrcoef(seen.ravel(), clean.ravel())[0, 1] > 0.9
