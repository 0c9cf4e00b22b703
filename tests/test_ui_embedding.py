"""The embedding map and the top patches on the web page, in a real browser against the real
served model: the map of 2,000 test digits, the user's digit on it with its nearest test digits,
and an enlarged conv channel's nine top patches.

    CONVLENS_EMBEDDING_SCREENSHOT=docs/embedding_map.png  also saves the README's screenshot.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui_fixtures import needs_chromium, new_page
from tests.ui_screenshot import save_compact, settled, wait_for_results

pytest_plugins = ["tests.serving_fixtures", "tests.ui_fixtures"]


@pytest.fixture
def page(browser, served_url) -> Iterator:
    """The shared fresh page, with 90 s per step rather than 60: the map of 2,000 test digits
    and the top patches are the page's heaviest views."""
    with new_page(browser, served_url, timeout_ms=90_000) as page:
        yield page


def map_pixels(page) -> dict:
    """How many pixels of the map canvas are painted in each of the ten label colours."""
    return page.evaluate(
        """() => {
        const c = document.getElementById('embedding-map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const hex = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
                     '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
        const rgb = hex.map(h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)));
        const counts = rgb.map(() => 0);
        for (let i = 0; i < d.length; i += 4)
          rgb.forEach((c, k) => {
            if (d[i] === c[0] && d[i + 1] === c[1] && d[i + 2] === c[2]) counts[k]++;
          });
        return counts;
    }"""
    )


@needs_chromium
def test_the_map_shows_every_class_and_places_the_users_digit(page, tmp_path):
    page.wait_for_function(
        "() => document.getElementById('embedding-card').dataset.state === 'ready'"
    )
    assert all(count > 50 for count in map_pixels(page)), map_pixels(page)

    before = settled(page)
    page.get_by_role("button", name=re.compile(r"a 3$")).click()
    assert wait_for_results(page, before) == "done"
    page.wait_for_function(
        "() => document.getElementById('embedding-card').dataset.state === 'placed'"
    )
    thumbs = page.locator("#map-neighbours img")
    assert thumbs.count() == 10
    assert all(
        page.eval_on_selector_all("#map-neighbours img", "i => i.map(x => x.naturalWidth === 28)")
    )
    assert re.search(
        r"read as \d\): \d+ of its 10 nearest", page.locator("#map-status").inner_text()
    )

    # Hovering a dot shows that test digit.
    page.locator("#embedding-map").scroll_into_view_if_needed()
    box = page.locator("#embedding-map").bounding_box()
    dots = page.evaluate(
        "() => fetch('/embedding', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: '{}'}).then(r => r.json()).then(d => d.positions.slice(0, 1))"
    )
    x, y = dots[0]
    inset = 12 * box["width"] / 560
    page.mouse.move(
        box["x"] + inset + x * (box["width"] - 2 * inset),
        box["y"] + inset + (1 - y) * (box["height"] - 2 * inset),
    )
    page.wait_for_function(
        "() => /^Test digit #\\d+, label \\d$/.test("
        "document.getElementById('map-hover-caption').textContent)"
    )
    page.locator("#embedding-card").screenshot(path=tmp_path / "map.png")
    print(f"screenshot of the map: {tmp_path / 'map.png'}")
    out = os.environ.get("CONVLENS_EMBEDDING_SCREENSHOT")
    if out:
        save_compact(page.locator("#embedding-card").screenshot(), Path(out))


@needs_chromium
def test_an_enlarged_conv_channel_shows_its_nine_top_patches(page, tmp_path):
    before = settled(page)
    page.get_by_role("button", name=re.compile(r"a 7$")).click()
    assert wait_for_results(page, before) == "done"
    page.locator(".map .grid-wrap").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "() => document.getElementById('top-patches').dataset.channel === 'conv1/1'"
    )
    assert page.locator("#top-patches").is_visible()
    sizes = page.eval_on_selector_all("#top-patches-grid img", "i => i.map(x => x.naturalWidth)")
    assert len(sizes) == 9 and all(size > 0 for size in sizes)
    assert "3×3 receptive field" in page.locator("#top-patches-info").inner_text()
    page.locator(".zoom").screenshot(path=tmp_path / "zoom.png")
    print(f"screenshot of the zoom panel: {tmp_path / 'zoom.png'}")
    out = os.environ.get("CONVLENS_PATCHES_SCREENSHOT")
    if out:
        save_compact(page.locator(".maps-layout").screenshot(), Path(out))
