"""The page's "why?" views in a real browser against the real served model: a clicked
probability bar's evidence (explain.js, /explain) with each method, and a clicked feature-map
pixel's receptive field and arithmetic (receptive.js, /receptive_field).

    CONVLENS_EXPLAIN_SCREENSHOTS=docs uv run --frozen pytest tests/test_ui_explain.py

also writes the README's docs/explain.png and docs/receptive_field.png.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.ui_fixtures import needs_chromium, new_page
from tests.ui_screenshot import (
    explain_digit,
    receptive_click,
    save_explain_screenshots,
    settled,
    wait_for_results,
)

pytest_plugins = ["tests.serving_fixtures", "tests.ui_fixtures"]

pytestmark = needs_chromium
METHODS = ["integrated_gradients", "saliency", "grad_cam", "occlusion"]


@pytest.fixture(scope="module")
def page(browser, served_url) -> Iterator:
    """One page for the module, showing the first test 7: each test explains a part of the
    same prediction, which is computed once."""
    with new_page(browser, served_url) as page:
        before = settled(page)
        page.locator("#samples button").nth(7).click()  # the first test 7
        assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
        yield page


def colours(page, selector: str) -> tuple[float, float]:
    """Shares of clearly red and clearly blue pixels in an element's screenshot."""
    shot = np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB"))
    shot = shot.astype(int)
    red = (shot[..., 0] - shot[..., 2] > 60).mean()
    blue = (shot[..., 2] - shot[..., 0] > 60).mean()
    return float(red), float(blue)


def test_the_explain_panel_is_hidden_until_a_bar_is_clicked(page):
    assert page.locator("#explain").is_hidden()
    assert page.locator("#bars .bar").count() == 10


@pytest.mark.parametrize("method", METHODS)
def test_a_clicked_bar_shows_coloured_evidence_for_its_class(page, method):
    explain_digit(page, 3, method)
    assert page.locator("#explain-title").inner_text() == "Why 3?"
    assert page.locator("#bars .bar.explained").get_attribute("data-digit") == "3"
    assert "the model reads 7" in page.locator("#explain-info").inner_text()
    red, blue = colours(page, "#explain-map")  # which colours depends on the digit and method
    assert red + blue > 0.01, (method, red, blue)


def test_the_predicted_class_is_explained_by_keyboard_too(page):
    page.locator('#bars .bar[data-digit="7"]').focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => (document.getElementById('explain').dataset.shown || '').startsWith('7/')"
    )
    assert "the model reads" not in page.locator("#explain-info").inner_text()


@pytest.mark.parametrize(("grid", "size"), [(0, 3), (1, 4), (2, 8), (3, 10)])
def test_a_clicked_feature_map_pixel_shows_its_field_and_value(page, grid, size):
    """The value the panel explains is the one the zoom shows under the mouse (the layer's
    /feature_maps JSON), and the outlined field has the architecture's size."""
    data = receptive_click(page, grid, channel_steps=2, at=(0.5, 0.45))
    top, left, height, width = (int(v) for v in data["field"].split(","))
    assert (height, width) == (size, size) and 0 <= top <= 28 - size and 0 <= left <= 28 - size
    shown = page.locator("#zoom-info").inner_text().rsplit(": ", 1)[-1]
    assert f"{float(data['value']):.3f}" == shown
    math = page.locator("#receptive-math").inner_text()
    if grid in (1, 3):
        assert "maximum" in math
    else:
        assert "bias" in math and "ReLU" in math
    if grid == 2:
        assert page.locator("#receptive-math .contributions li").count() == 9  # 8 + the rest


def test_readme_screenshots(page, served_url):
    out = os.environ.get("CONVLENS_EXPLAIN_SCREENSHOTS")
    if not out:
        pytest.skip("set CONVLENS_EXPLAIN_SCREENSHOTS=docs to write the README's screenshots")
    for path in save_explain_screenshots(page, Path(out)):
        assert path.stat().st_size > 10_000
