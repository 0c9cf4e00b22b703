"""The model card's "served so far" in a real browser: the figures /metrics holds, read out.

CONVLENS_MONITORING_SCREENSHOT=docs/monitoring.png saves the card for the README.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from convlens.drift import reading
from serving.monitoring import WINDOW
from tests.harness import digit_png, png_bytes
from tests.test_monitoring import mnist_sample, shrunk_into_a_corner
from tests.ui_fixtures import needs_chromium, new_page

pytest_plugins = ["tests.serving_fixtures", "tests.ui_fixtures"]

pytestmark = needs_chromium


def metric_totals(url: str) -> dict[str, float]:
    """Predictions, no-digit answers and the worst drift score, summed as the card sums them."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    totals = {"predictions": 0.0, "no_digit": 0.0, "drift": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "convlens_predictions_total":
                totals["predictions"] += sample.value
            elif sample.name == "convlens_no_digit_answers_total":
                totals["no_digit"] += sample.value
            elif sample.name == "convlens_input_drift_psi":
                totals["drift"] = max(totals["drift"], sample.value)
    return totals


@pytest.fixture(scope="module")
def page_after_traffic(browser, served_url, mnist_root) -> Iterator:
    """The page, opened after three uploads, a blank one and a window of shifted digits."""
    for index in range(3):
        files = {"image": ("digit.png", digit_png(index, mnist_root), "image/png")}
        assert httpx.post(f"{served_url}/predict", files=files, timeout=60).status_code == 200
    blank = {"image": ("blank.png", png_bytes(np.zeros((40, 40), np.uint8)), "image/png")}
    assert httpx.post(f"{served_url}/predict", files=blank, timeout=60).status_code == 422
    shifted = shrunk_into_a_corner(mnist_sample(mnist_root, WINDOW, seed=7))
    body = json.dumps({"images": shifted.astype(int).tolist()})
    answer = httpx.post(
        f"{served_url}/predict_batch",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert answer.status_code == 200
    totals = metric_totals(served_url)
    with new_page(browser, served_url, viewport=(1200, 900)) as page:
        page.wait_for_selector("#model-stats[data-loaded=true]", timeout=30_000)
        yield page, totals


def test_card_shows_the_predictions_metrics_counted(page_after_traffic):
    page, totals = page_after_traffic
    line = page.locator("[data-stat=predictions]").inner_text()
    assert line == f"{int(totals['predictions']):,} served"
    assert page.locator(".stat-panel").first.locator(".stat-bar").count() == 10


def test_card_shows_the_no_digit_answers(page_after_traffic):
    page, totals = page_after_traffic
    assert totals["no_digit"] >= 1
    text = page.locator("[data-stat=no-digit]").inner_text()
    assert text.startswith(f"{int(totals['no_digit'])} upload")


def test_card_reads_the_drift_score_in_words(page_after_traffic, tmp_path):
    page, totals = page_after_traffic
    drift = page.locator("[data-stat=drift]")
    assert drift.get_attribute("data-reading") == reading(totals["drift"]) == "drifted"
    assert f"PSI {totals['drift']:.2f}: drifted" in drift.inner_text()
    card = page.locator("#card-title").locator("..")
    card.scroll_into_view_if_needed()
    out = Path(os.environ.get("CONVLENS_MONITORING_SCREENSHOT") or tmp_path / "card.png")
    card.screenshot(path=str(out))
    with Image.open(out) as shot:
        assert shot.width > 600 and shot.height > 400


def test_page_and_service_read_psi_alike(page_after_traffic):
    page, _ = page_after_traffic
    scores = [0.0, 0.099, 0.1, 0.25, 0.2501, 3.0]
    in_page = page.evaluate(
        "async (scores) => { const m = await import('./model-stats.js');"
        " return scores.map(m.driftReading); }",
        scores,
    )
    assert in_page == [reading(score) for score in scores]


def test_page_parses_prometheus_text_with_escaped_labels(page_after_traffic):
    page, _ = page_after_traffic
    text = (
        "# HELP convlens_feedback_total Feedback.\n"
        'convlens_feedback_total{agreed="true",model_version="v\\"2"} 3.0\n'
        'convlens_feedback_total{agreed="false",model_version="v\\"2"} 1.0\n'
    )
    summary = page.evaluate(
        "async (text) => { const m = await import('./model-stats.js');"
        " const s = m.summarize(m.parseMetrics(text));"
        " return Object.fromEntries(s.feedback); }",
        text,
    )
    assert summary == {'v"2': {"agreed": 3, "total": 4}}
