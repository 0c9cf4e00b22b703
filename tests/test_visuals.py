"""Grids of filters and feature maps."""

import numpy as np
import pytest

from convlens.visuals import colormap, feature_map_grid, filter_grid, grid


def test_thirty_two_maps_form_the_tutorial_four_by_eight_grid():
    image = grid(np.random.rand(32, 26, 26), cols=8, min_tile_px=26, pad=2)
    assert image.size == (8 * 28 + 2, 4 * 28 + 2)


def test_small_tiles_are_enlarged_to_stay_readable():
    image = feature_map_grid(np.random.rand(64, 5, 5))
    assert image.width >= 8 * 48


def test_first_layer_filters_are_gray():
    pixels = np.asarray(filter_grid(np.random.randn(32, 1, 3, 3)))
    assert (pixels[..., 0] == pixels[..., 1]).all()


def test_deep_filters_show_every_input_channel():
    image = filter_grid(np.random.randn(64, 32, 3, 3))
    assert image.height > image.width  # 64 rows of filters, 32 columns of input channels


def test_flat_maps_render_without_dividing_by_zero():
    pixels = np.asarray(feature_map_grid(np.zeros((4, 6, 6))))
    assert np.isfinite(pixels).all()


def test_colormap_is_a_256_entry_rgb_table():
    assert colormap().shape == (256, 3)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (feature_map_grid, (32, 26, 26)),
        (feature_map_grid, (64, 11, 11)),
        (filter_grid, (32, 1, 3, 3)),
        (filter_grid, (64, 32, 3, 3)),
    ],
)
def test_wide_grids_are_about_four_times_as_wide_as_tall(make, shape):
    """What MLflow's image cards show whole under the run's params (tests/test_mlflow_ui.py)."""
    width, height = make(np.random.rand(*shape).astype(np.float32), wide=True).size
    assert width >= 3.9 * height  # 16 x 4 tiles and their padding


def test_wide_filter_grid_shows_every_kernel():
    weights = np.random.randn(64, 32, 3, 3).astype(np.float32)
    width, height = filter_grid(weights, wide=True).size
    tile = 3 * 4 + 1  # 3x3 kernels enlarged 4x, 1 px apart
    assert ((width - 1) // tile) * ((height - 1) // tile) == 64 * 32
