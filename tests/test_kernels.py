"""The tutorial's building blocks, checked against its worked examples with the true values."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.kernels import KERNELS, convolve2d, max_pool, relu

# The tutorial's 5x5 image: 10, 20, ..., 250, row by row.
IMAGE_5X5 = np.arange(10, 260, 10, dtype=np.float32).reshape(5, 5)
# The tutorial's 4x4 feature map for pooling: 1..16, row by row.
MAP_4X4 = np.arange(1, 17, dtype=np.float32).reshape(4, 4)


def test_horizontal_edge_on_the_tutorial_image_is_300_everywhere():
    # Each window's bottom row minus its top row: (110+120+130) - (10+20+30) = 360 - 60 = 300.
    # The tutorial's text says 200 for the first cell, an arithmetic slip.
    out = convolve2d(IMAGE_5X5, KERNELS["horizontal_edge"])
    np.testing.assert_array_equal(out, np.full((3, 3), 300.0))


def test_first_cell_by_hand():
    window = IMAGE_5X5[:3, :3]
    by_hand = float((window * KERNELS["horizontal_edge"]).sum())
    assert by_hand == 300.0
    assert convolve2d(IMAGE_5X5, KERNELS["horizontal_edge"])[0, 0] == by_hand


def test_valid_convolution_shrinks_by_kernel_size_minus_one():
    image = np.zeros((28, 28), dtype=np.float32)
    for kernel in KERNELS.values():
        assert convolve2d(image, kernel).shape == (26, 26)


def test_vertical_edge_on_the_tutorial_image_is_60_everywhere():
    # Right column minus left column: 3 rows x 2 columns x 10 = 60.
    out = convolve2d(IMAGE_5X5, KERNELS["vertical_edge"])
    np.testing.assert_array_equal(out, np.full((3, 3), 60.0))


def test_blur_averages_each_window():
    out = convolve2d(IMAGE_5X5, KERNELS["blur"])
    expected = np.array([[70, 80, 90], [120, 130, 140], [170, 180, 190]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_sharpen_keeps_a_linear_ramp_unchanged():
    # 5 x centre minus its 4 neighbours: on a linear ramp the neighbours average the centre.
    out = convolve2d(IMAGE_5X5, KERNELS["sharpen"])
    np.testing.assert_allclose(out, IMAGE_5X5[1:4, 1:4], rtol=1e-6)


def test_convolution_does_not_flip_the_kernel():
    # Cross-correlation, as CNN layers compute it: a flipped kernel would give -300.
    out = convolve2d(IMAGE_5X5, KERNELS["horizontal_edge"][::-1])
    np.testing.assert_array_equal(out, np.full((3, 3), -300.0))


def test_convolution_stride_2_takes_every_other_window():
    image = np.arange(49, dtype=np.float32).reshape(7, 7)
    kernel = np.zeros((3, 3), dtype=np.float32)
    kernel[0, 0] = 1.0  # picks the top-left pixel of each window
    out = convolve2d(image, kernel, stride=2)
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out, image[0:5:2, 0:5:2])


def test_convolution_stride_2_on_the_tutorial_image():
    out = convolve2d(IMAGE_5X5, KERNELS["horizontal_edge"], stride=2)
    np.testing.assert_array_equal(out, np.full((2, 2), 300.0))


def test_convolution_accepts_integer_images():
    out = convolve2d(IMAGE_5X5.astype(np.uint8), KERNELS["horizontal_edge"])
    np.testing.assert_array_equal(out, np.full((3, 3), 300.0))


def test_relu_zeros_negatives():
    x = np.array([[-3.0, -0.5, 0.0], [0.5, 2.0, -100.0]])
    np.testing.assert_array_equal(relu(x), [[0.0, 0.0, 0.0], [0.5, 2.0, 0.0]])


def test_relu_keeps_positives_unchanged():
    x = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    np.testing.assert_array_equal(relu(x), x)


def test_relu_after_a_negative_edge_response():
    # The flipped edge kernel gives -300 everywhere; ReLU leaves nothing.
    out = relu(convolve2d(IMAGE_5X5, KERNELS["horizontal_edge"][::-1]))
    np.testing.assert_array_equal(out, np.zeros((3, 3)))


def test_max_pool_2x2_on_the_tutorial_map():
    np.testing.assert_array_equal(max_pool(MAP_4X4, 2), [[6, 8], [14, 16]])


def test_max_pool_default_stride_equals_size():
    assert max_pool(MAP_4X4).shape == (2, 2)
    np.testing.assert_array_equal(max_pool(MAP_4X4), max_pool(MAP_4X4, 2, 2))


def test_max_pool_stride_1_overlaps_windows():
    np.testing.assert_array_equal(
        max_pool(MAP_4X4, 2, stride=1), [[6, 7, 8], [10, 11, 12], [14, 15, 16]]
    )


def test_max_pool_drops_windows_that_do_not_fit():
    x = np.arange(1, 26, dtype=np.float32).reshape(5, 5)
    np.testing.assert_array_equal(max_pool(x, 2), [[7, 9], [17, 19]])


def test_max_pool_picks_the_largest_even_when_negative():
    x = -MAP_4X4
    np.testing.assert_array_equal(max_pool(x, 2), [[-1, -3], [-9, -11]])


@pytest.mark.parametrize("name", ["horizontal_edge", "vertical_edge", "blur", "sharpen"])
def test_the_four_kernels_are_3x3(name):
    assert KERNELS[name].shape == (3, 3)


def test_conv_relu_pool_pipeline_on_a_28x28_digit_shape():
    image = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.float32)
    out = max_pool(relu(convolve2d(image, KERNELS["sharpen"])), 2)
    assert out.shape == (13, 13)
    assert (out >= 0).all()
