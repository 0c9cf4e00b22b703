"""The web page at /ui, driven in a real browser against the real served model."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.ui_screenshot import (
    CHROMIUM,
    SAMPLES_DIR,
    SEVEN,
    UI_DIR,
    digit_png,
    draw_stroke,
    launch,
    mnist_test_images,
    open_page,
    settled,
    take_screenshot,
    wait_for_results,
)

# `served_url`: the session's `bentoml serve` of the model the `trained` fixture registered.
pytest_plugins = ["tests.serving_fixtures"]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) "
    "or set CONVLENS_CHROMIUM; Playwright's own browser download is not used",
)

UPLOAD_INDEX = 1234  # an MNIST test image that is not one of the page's samples


# ------------------------------------------------------------------ static files, no browser


def test_samples_are_the_first_mnist_test_image_of_each_digit(mnist_root):
    images, labels = mnist_test_images(mnist_root)
    manifest = json.loads((SAMPLES_DIR / "index.json").read_text())
    samples = manifest["samples"]
    assert [s["label"] for s in samples] == list(range(10))
    for sample in samples:
        path = SAMPLES_DIR / sample["file"]
        assert path.stat().st_size < 4096
        pixels = np.asarray(Image.open(path))
        np.testing.assert_array_equal(pixels, images[sample["index"]])
        assert labels[sample["index"]] == sample["label"]
        assert sample["index"] == int(np.flatnonzero(labels == sample["label"])[0])


def test_page_uses_no_outside_resources():
    """Works offline: no CDN, no web fonts; the only absolute URL is the optional MLflow UI."""
    for name in ("index.html", "app.js", "style.css"):
        text = (UI_DIR / name).read_text()
        for url in re.findall(r"https?://[^\s\"'`)]+", text):
            assert url.startswith("http://127.0.0.1:5000"), f"{name} loads {url}"
        assert "@import" not in text and '<script src="http' not in text


def test_ui_app_serves_the_page_and_its_assets():
    from serving.ui_app import ui_app

    async def fetch_all():
        transport = httpx.ASGITransport(app=ui_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
            paths = ["/", "/app.js", "/style.css", "/samples/index.json", "/nope.js"]
            return {path: await client.get(path) for path in paths}

    responses = asyncio.run(fetch_all())
    page = responses["/"]
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="app.js"' in page.text and 'href="style.css"' in page.text
    assert responses["/app.js"].headers["content-type"].split(";")[0] in (
        "text/javascript",
        "application/javascript",
    )
    assert responses["/style.css"].headers["content-type"].startswith("text/css")
    assert responses["/samples/index.json"].json()["samples"]
    assert responses["/nope.js"].status_code == 404


# ------------------------------------------------------------------ against the served model


def test_service_mounts_the_page(served_url):
    with httpx.Client(base_url=served_url, timeout=30) as client:
        redirect = client.get("/ui")
        assert redirect.status_code in (301, 302, 307, 308)
        assert redirect.headers["location"].endswith("/ui/")
        page = client.get("/ui/")
        assert page.status_code == 200 and "<canvas" in page.text
        assert client.get("/ui/app.js").status_code == 200


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) "
            "or set CONVLENS_CHROMIUM; Playwright's own browser download is not used"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_page(page, served_url)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def model_info(base_url: str) -> dict:
    response = httpx.post(f"{base_url}/model_info", json={}, timeout=30)
    response.raise_for_status()
    return response.json()


def spatial_layers(info: dict) -> list[str]:
    return [
        layer["name"]
        for layer in info["layers"]
        if re.search("conv|pool", f"{layer['type']} {layer['name']}", re.I)
        and len(layer["output_shape"]) == 3
    ]


def loaded(page, selector: str) -> list[int]:
    return page.eval_on_selector_all(
        selector, "imgs => imgs.map(i => (i.complete && i.naturalWidth) || 0)"
    )


@needs_chromium
def test_drawing_a_digit_shows_prediction_and_every_layer(page, served_url):
    before = settled(page)
    draw_stroke(page, SEVEN)
    assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()

    assert re.fullmatch(r"\d", page.locator("#label").inner_text())
    bars = page.locator("#bars .bar")
    assert bars.count() == 10
    probabilities = [float(bars.nth(i).get_attribute("data-p")) for i in range(10)]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    top = int(np.argmax(probabilities))
    assert page.locator("#bars .bar.top").get_attribute("data-digit") == str(top)
    assert page.locator("#label").inner_text() == str(top)

    layers = spatial_layers(model_info(served_url))
    assert layers, "model_info lists no conv or pool layers"
    shown = page.eval_on_selector_all(".map", "maps => maps.map(m => m.dataset.layer)")
    assert shown == layers
    widths = loaded(page, ".map img")
    assert len(widths) == len(layers) and all(w > 0 for w in widths), dict(
        zip(layers, widths, strict=False)
    )
    assert loaded(page, "#preprocessed")[0] > 0
    steps = loaded(page, ".block-row img")
    assert len(steps) == 16 and all(w > 0 for w in steps)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#filters img')].every(i => i.naturalWidth > 0)"
    )
    assert page.locator("#filters img").count() == sum(1 for n in layers if "conv" in n)


@needs_chromium
def test_uploaded_mnist_digit_gets_the_same_label_as_predict(
    page, served_url, mnist_root, tmp_path
):
    images, _ = mnist_test_images(mnist_root)
    path = tmp_path / f"mnist-test-{UPLOAD_INDEX}.png"
    path.write_bytes(digit_png(images[UPLOAD_INDEX]))
    response = httpx.post(
        f"{served_url}/predict",
        files={"image": (path.name, path.read_bytes(), "image/png")},
        timeout=60,
    )
    response.raise_for_status()
    expected = response.json()["label"]

    before = settled(page)
    page.set_input_files("#upload", str(path))
    assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
    assert page.locator("#label").inner_text() == str(expected)


@needs_chromium
def test_service_errors_are_shown_to_the_user(page):
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, "PNG")
    before = settled(page)
    page.set_input_files(
        "#upload",
        files=[{"name": "blank.png", "mimeType": "image/png", "buffer": blank.getvalue()}],
    )
    assert wait_for_results(page, before) == "error"
    status = page.locator("#status")
    assert status.get_attribute("data-kind") == "error"
    message = status.inner_text()
    assert len(message) > 10 and "{" not in message and "[object" not in message
    assert page.locator("#bars .bar").count() == 0


@needs_chromium
def test_sample_clear_undo_and_keyboard_zoom(page):
    before = settled(page)
    page.get_by_role("button", name=re.compile(r"a 3$")).click()
    assert wait_for_results(page, before) == "done"
    label = page.locator("#label").inner_text()

    before = settled(page)
    page.get_by_role("button", name="Clear").click()
    assert wait_for_results(page, before) == "empty"
    assert page.locator("#bars .bar").count() == 0

    before = settled(page)
    page.keyboard.press("Control+z")
    assert wait_for_results(page, before) == "done"
    assert page.locator("#label").inner_text() == label

    grid = page.locator(".map .grid-wrap").first
    grid.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    page.wait_for_function(
        "() => /channel 10 of/.test(document.getElementById('zoom-info').textContent) &&"
        " /values/.test(document.getElementById('zoom-info').textContent)"
    )
    assert page.locator(".map .mark").first.is_visible()


@needs_chromium
def test_page_fits_a_phone(browser, served_url):
    context = browser.new_context(
        viewport={"width": 375, "height": 740}, has_touch=True, is_mobile=True
    )
    try:
        page = context.new_page()
        open_page(page, served_url)
        before = settled(page)
        page.locator("#samples button").first.tap()
        assert wait_for_results(page, before) == "done"
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    finally:
        context.close()


@needs_chromium
@pytest.mark.skipif(
    not os.environ.get("CONVLENS_SCREENSHOT"),
    reason="set CONVLENS_SCREENSHOT=docs/ui.png to refresh the README's screenshot",
)
def test_readme_screenshot(browser, served_url):
    out = Path(os.environ["CONVLENS_SCREENSHOT"])
    path = take_screenshot(served_url, out, browser=browser)
    assert 0 < path.stat().st_size < 500_000
