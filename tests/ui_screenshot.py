"""Browser tooling for the web page: launch Debian's Chromium, drive the page, screenshot it.

    # the README's screenshot, against a running service (make serve):
    uv run --frozen python -m tests.ui_screenshot --url http://127.0.0.1:3000 --out docs/ui.png
    # or from the browser test, against the test suite's own served model:
    CONVLENS_SCREENSHOT=docs/ui.png uv run --frozen pytest tests/test_ui.py
    # the "why?" views (docs/explain.png, docs/receptive_field.png):
    uv run --frozen python -m tests.ui_screenshot --url http://127.0.0.1:3000 --explain
    # regenerate the page's sample digits from the MNIST test set:
    uv run --frozen python -m tests.ui_screenshot --samples

Playwright drives the system Chromium (`apt-get install chromium`); it never downloads one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.harness import mnist_test_set

REPO = Path(__file__).resolve().parents[1]
UI_DIR = REPO / "serving" / "ui"
SAMPLES_DIR = UI_DIR / "samples"
CHROMIUM = Path(os.environ.get("CONVLENS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAX_SCREENSHOT_BYTES = 500_000


def launch(playwright):
    """Debian's Chromium through Playwright, headless, no downloads, no phoning home."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


# ------------------------------------------------------------------ MNIST test digits


def digit_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def write_samples(data_dir: Path, out_dir: Path = SAMPLES_DIR) -> list[dict]:
    """The first test image of each digit as a 28x28 PNG, plus `index.json` for the page."""
    images, labels = mnist_test_set(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for digit in range(10):
        index = int(np.flatnonzero(labels == digit)[0])
        name = f"mnist-test-{index:05d}.png"
        (out_dir / name).write_bytes(digit_png(images[index]))
        samples.append({"file": name, "label": digit, "index": index})
    manifest = {
        "source": "MNIST test set (t10k), first image of each digit",
        "samples": samples,
    }
    (out_dir / "index.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return samples


# ------------------------------------------------------------------ driving the page


def settled(page) -> int:
    """How many evaluations of the input the page has finished (all views arrived or failed)."""
    return int(page.evaluate("Number(document.body.dataset.settled || 0)"))


def wait_for_results(page, after: int, timeout_ms: float = 60_000) -> str:
    """Wait until the page has evaluated its latest input, in an evaluation newer than `after`;
    returns 'done', 'error' or 'empty'. (A long stroke is also evaluated midway.)"""
    page.wait_for_function(
        """after => {
            const page = document.body.dataset;
            const settled = Number(page.settled || 0);
            return settled > after && settled === Number(page.generation) && !page.scheduled;
        }""",
        arg=int(after),
        timeout=timeout_ms,
    )
    return page.evaluate("document.body.dataset.state")


def open_page(page, base_url: str, timeout_ms: float = 60_000) -> None:
    page.goto(f"{base_url.rstrip('/')}/ui/", wait_until="load")
    page.wait_for_function("() => document.body.dataset.ready === 'true'", timeout=timeout_ms)


def draw_stroke(page, points: list[tuple[float, float]], pause_ms: float = 0) -> None:
    """Draw one stroke with mouse events, `points` as fractions of the canvas size, holding
    still for `pause_ms` at each point (long enough, and the page evaluates the stroke so far)."""
    box = page.locator("#pad").bounding_box()
    assert box is not None, "the drawing canvas is not visible"

    def at(p):
        return box["x"] + p[0] * box["width"], box["y"] + p[1] * box["height"]

    page.mouse.move(*at(points[0]))
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*at(p), steps=4)
        if pause_ms:
            page.wait_for_timeout(pause_ms)
    page.mouse.up()


# A "7": top bar, then the diagonal down to the bottom left.
SEVEN = [(0.25, 0.22), (0.5, 0.21), (0.75, 0.22), (0.62, 0.5), (0.48, 0.8)]


def take_screenshot(
    base_url: str, out: Path, sample_index: int | None = None, browser=None
) -> Path:
    """Draw a 7 (or pick sample `sample_index`), enlarge one conv1 channel, and save a compact
    full-page PNG."""
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            own = launch(p)
            try:
                return take_screenshot(base_url, out, sample_index, own)
            finally:
                own.close()

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        open_page(page, base_url)
        before = settled(page)
        if sample_index is None:
            draw_stroke(page, SEVEN)
        else:
            page.locator("#samples button").nth(sample_index).click()
        assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#filters img, .map img, .step img')]"
            ".every(img => img.complete && img.naturalWidth > 0)"
        )
        page.locator(".map .grid-wrap").first.focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "() => /values/.test(document.getElementById('zoom-info').textContent)"
        )
        page.evaluate("document.activeElement.blur()")
        png = page.screenshot(full_page=True)
    finally:
        context.close()
    return save_compact(png, out)


def save_compact(png: bytes, out: Path) -> Path:
    """Save a screenshot as a palette PNG, halving it until it fits the README budget."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        buffer = io.BytesIO()
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            buffer, "PNG", optimize=True
        )
        if buffer.tell() <= MAX_SCREENSHOT_BYTES or image.width < 400:
            break
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    out.write_bytes(buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui.png")
    parser.add_argument(
        "--sample", type=int, help="show sample digit N (0-9) instead of drawing a 7"
    )
    parser.add_argument(
        "--samples", action="store_true", help="regenerate serving/ui/samples/ from MNIST"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="write docs/explain.png and docs/receptive_field.png (into --out's folder)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CONVLENS_DATA_DIR", REPO / "data")),
        help="folder holding MNIST/raw/ (default: $CONVLENS_DATA_DIR or data/)",
    )
    args = parser.parse_args(argv)
    if args.samples:
        for sample in write_samples(args.data_dir):
            where = SAMPLES_DIR / sample["file"]
            print(f"{where}: test image {sample['index']}, a {sample['label']}")
        return
    if args.explain:
        for path in explain_screenshots(args.url, args.out.parent, args.sample or 7):
            print(f"{path}: {path.stat().st_size / 1000:.0f} kB")
        return
    path = take_screenshot(args.url, args.out, args.sample)
    print(f"{path}: {path.stat().st_size / 1000:.0f} kB")


# ------------------------------------------------------------------ the "why?" views


def explain_digit(page, digit: int, method: str, timeout_ms: float = 120_000) -> None:
    """Click the probability bar of `digit`, pick `method`, wait for its evidence map."""
    page.locator(f'#bars .bar[data-digit="{digit}"]').click()
    page.locator(f'#explain-methods input[value="{method}"]').check()
    page.wait_for_function(
        f"() => document.getElementById('explain').dataset.shown === '{digit}/{method}'"
        " && document.getElementById('explain-map').naturalWidth > 0",
        timeout=timeout_ms,
    )


def receptive_click(
    page, grid: int, channel_steps: int, at: tuple[float, float], timeout_ms: float = 60_000
) -> dict:
    """Enlarge a channel of feature-map grid `grid`, click the zoom at `at` (fractions), and
    wait for the receptive field panel; returns its data attributes."""
    page.locator(".map .grid-wrap").nth(grid).focus()
    page.keyboard.press("Home")
    for _ in range(channel_steps):
        page.keyboard.press("ArrowRight")
    layer = page.locator(".map").nth(grid).get_attribute("data-layer")
    page.wait_for_function(
        f"() => document.getElementById('zoom-title').textContent.startsWith('{layer} ')"
        " && /values/.test(document.getElementById('zoom-info').textContent)",
        timeout=timeout_ms,
    )
    page.evaluate("document.getElementById('receptive').dataset.state = ''")
    box = page.locator("#zoom").bounding_box()
    page.mouse.click(box["x"] + at[0] * box["width"], box["y"] + at[1] * box["height"])
    page.wait_for_function(
        "() => document.getElementById('receptive').dataset.state === 'done'", timeout=timeout_ms
    )
    return page.evaluate("({...document.getElementById('receptive').dataset})")


def save_explain_screenshots(page, out_dir: Path) -> list[Path]:
    """docs/explain.png (the prediction card, Integrated Gradients for the label) and
    docs/receptive_field.png (the zoom panel explaining a conv1 value)."""
    label = page.locator("#label").inner_text()
    explain_digit(page, int(label), "integrated_gradients")
    paths = [save_compact(page.locator("#results").screenshot(), out_dir / "explain.png")]
    receptive_click(page, 0, channel_steps=2, at=(0.5, 0.45))
    page.evaluate("document.activeElement.blur()")
    shot = page.locator(".maps-layout .zoom").screenshot()
    paths.append(save_compact(shot, out_dir / "receptive_field.png"))
    return paths


def explain_screenshots(base_url: str, out_dir: Path, sample_index: int = 7) -> list[Path]:
    """Open the page, pick sample `sample_index`, and save the "why?" views' screenshots."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            open_page(page, base_url)
            before = settled(page)
            page.locator("#samples button").nth(sample_index).click()
            assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
            return save_explain_screenshots(page, out_dir)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
