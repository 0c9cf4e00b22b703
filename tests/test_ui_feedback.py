"""The page's "Right?" question in real Chromium against the real service: what a user clicks
is stored as they meant it (read back from the service's database), and a failure is said."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from convlens.feedback import FeedbackStore
from tests.serving_fixtures import start_server, stop, wait_until_ready
from tests.ui_feedback_screenshot import (
    answer,
    pick_sample,
    sample_bytes,
    take_feedback_screenshot,
)
from tests.ui_fixtures import needs_chromium, new_page
from tests.ui_screenshot import SEVEN, draw_stroke, settled, wait_for_results

pytest_plugins = ["tests.serving_fixtures", "tests.ui_fixtures"]
pytestmark = needs_chromium


@pytest.fixture
def stored(served_feedback_url) -> Iterator[FeedbackStore]:
    store = FeedbackStore(served_feedback_url)
    yield store
    store.close()


def sha(index: int) -> str:
    return hashlib.sha256(sample_bytes(index)).hexdigest()


def test_the_question_waits_for_a_prediction(page):
    assert page.locator("#feedback").is_hidden()
    label = pick_sample(page, 2)
    assert page.locator("#feedback-ask").inner_text() == "Right?"
    assert page.locator("#feedback-yes").inner_text() == f"Yes, it is {label}"
    buttons = page.locator("#feedback-digits button")
    assert [buttons.nth(i).inner_text() for i in range(buttons.count())] == list("0123456789")


def test_choosing_the_right_digit_stores_it_with_the_prediction(page, stored):
    label = pick_sample(page, 5)
    other = (label + 3) % 10
    assert answer(page, other) == f"Saved, thank you: it is a {other}."
    assert page.locator("#feedback").get_attribute("data-state") == "saved"
    record = stored.get(sha(5))
    assert record is not None and record.image == sample_bytes(5)
    assert (record.label, record.predicted) == (other, label)
    assert record.model_version  # the version /predict answered with
    pressed = page.locator('#feedback-digits button[aria-pressed="true"]')
    assert pressed.inner_text() == str(other)


def test_yes_stores_the_prediction_and_a_second_answer_corrects_it(page, stored):
    label = pick_sample(page, 7)
    assert "Saved" in answer(page, None)
    assert stored.get(sha(7)).label == label
    corrected = (label + 1) % 10
    assert answer(page, corrected) == f"Saved again: this image is now labelled {corrected}."
    assert stored.get(sha(7)).label == corrected


def test_a_new_drawing_puts_the_question_away_until_its_prediction(page):
    pick_sample(page, 1)
    page.locator("#clear").click()
    page.locator("#feedback").wait_for(state="hidden")
    before = settled(page)
    draw_stroke(page, SEVEN)
    assert wait_for_results(page, before) == "done"
    page.locator("#feedback").wait_for(state="visible")
    assert page.locator("#feedback-status").inner_text() == ""


def test_a_feedback_database_that_is_down_is_said_on_the_page(browser, packaged, tmp_path):
    """A service whose feedback database cannot be written (its folder cannot be created):
    the prediction works, the answer is refused with the service's reason."""
    env = {
        "CONVLENS_MODEL": packaged.model_tag,
        "CONVLENS_FEEDBACK_URL": "sqlite:////proc/convlens/feedback.db",
    }
    process, server = start_server(packaged.bentoml_home, tmp_path / "serve.log", **env)
    try:
        wait_until_ready(process)
        with new_page(browser, server.url) as page:
            pick_sample(page, 4)
            said = answer(page, 4)
            assert page.locator("#feedback").get_attribute("data-state") == "error"
            assert said.startswith("Not saved: The feedback database's folder cannot be"), said
            assert page.locator("#label").inner_text() == "4"  # the prediction still works
            page.screenshot(path=str(tmp_path / "feedback-error.png"))
    finally:
        stop(process)


def test_the_readme_screenshot_shows_a_saved_correction(browser, served_url, tmp_path):
    out = tmp_path / "ui-feedback.png"
    take_feedback_screenshot(served_url, out, index=3, browser=browser)
    assert 1_000 < out.stat().st_size < 500_000
