"""The web page's "Right?" question, answered, as a screenshot for the README.

    python -m tests.ui_feedback_screenshot --url http://127.0.0.1:3000 --out docs/ui-feedback.png

Picks an MNIST sample digit, waits for its prediction, answers with the sample's true label
("Yes" if the model read it right, else the right digit) and captures the prediction card once
the answer is saved. It stores a feedback row in the service it talks
to; delete it with `make feedback ARGS="--delete <sha256>"` (the sha256 is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from tests.ui_screenshot import (
    REPO,
    SAMPLES_DIR,
    launch,
    open_page,
    save_compact,
    settled,
    wait_for_results,
)


def pick_sample(page, index: int) -> int:
    """Click sample `index` and wait for its prediction; the label the page shows."""
    before = settled(page)
    page.locator("#samples button").nth(index).click()
    assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
    page.locator("#feedback").wait_for(state="visible")
    return int(page.locator("#label").inner_text())


def answer(page, digit: int | None) -> str:
    """Click a digit (None: "Yes"), and wait until the answer is saved or refused; the line
    the page shows under the buttons."""
    if digit is None:
        page.locator("#feedback-yes").click()
    else:
        page.locator(f'#feedback-digits button[data-digit="{digit}"]').click()
    page.wait_for_function(
        "() => ['saved', 'error'].includes(document.getElementById('feedback').dataset.state)"
    )
    return page.locator("#feedback-status").inner_text()


def sample(index: int) -> dict:
    return json.loads((SAMPLES_DIR / "index.json").read_text())["samples"][index]


def sample_bytes(index: int) -> bytes:
    """The file the page sends, as is, for sample button `index`."""
    return (SAMPLES_DIR / sample(index)["file"]).read_bytes()


def sample_label(index: int) -> int:
    return int(sample(index)["label"])


def take_feedback_screenshot(base_url: str, out: Path, index: int = 3, browser=None) -> str:
    """Answer the question about sample `index` truthfully; the row's sha256."""
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            own = launch(p)
            try:
                return take_feedback_screenshot(base_url, out, index, own)
            finally:
                own.close()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        open_page(page, base_url)
        label = pick_sample(page, index)
        truth = sample_label(index)
        answer(page, None if truth == label else truth)
        save_compact(page.locator("#results").screenshot(), out)
    finally:
        context.close()
    return hashlib.sha256(sample_bytes(index)).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui-feedback.png")
    parser.add_argument("--sample", type=int, default=3, help="sample digit N (0-9)")
    args = parser.parse_args(argv)
    sha = take_feedback_screenshot(args.url, args.out, args.sample)
    print(f"{args.out}: {args.out.stat().st_size / 1000:.0f} kB; feedback row {sha}")


if __name__ == "__main__":
    main()
