"""The model's series at /metrics, scraped from a real two-worker `bentoml serve`, and the
drift statistics they rest on.

The server is this module's own (two workers, its own BentoML home, so its Prometheus files
are its own), and its counters are cumulative: the tests assert on differences. The drift
tests run last, in file order: every input before them is an MNIST test digit (drawn at
random: `mnist_sample`), so any worker's window reads as stable until the shifted digits
arrive.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from convlens.drift import (
    DRIFTED,
    EMPTY_BIN,
    STABLE,
    STATISTICS,
    Reference,
    Window,
    mnist_reference,
    psi,
    reading,
    reference_from,
    statistics,
)
from serving.monitoring import MIN_INPUTS, REFERENCE_FILE, WINDOW
from tests.conftest import REPO
from tests.harness import ServerProcess, digit_png, free_port, mnist_test_set, png_bytes
from tests.serving_fixtures import READY_TIMEOUT_S, SERVICE, Packaged, bentoml_env

pytest_plugins = ["tests.serving_fixtures"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# ------------------------------------------------------------------ PSI and the statistics


def test_psi_of_a_distribution_against_itself_is_zero():
    proportions = np.array([0.1, 0.2, 0.3, 0.4])
    assert psi(proportions, proportions) == 0.0


def test_psi_is_the_sum_of_difference_times_log_ratio():
    expected, actual = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    by_hand = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(actual, expected) == pytest.approx(by_hand)  # symmetric


def test_psi_with_an_empty_bin_is_large_but_finite():
    score = psi(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    by_hand = 0.5 * np.log(1 / 0.5) + (EMPTY_BIN - 0.5) * np.log(EMPTY_BIN / 0.5)
    assert score == pytest.approx(by_hand)
    assert DRIFTED < score < 10


def test_psi_reads_as_stable_moderate_or_drifted():
    assert [reading(x) for x in (0.0, 0.099, STABLE, 0.25, 0.2501, 3.0)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "drifted",
        "drifted",
    ]


def test_statistics_of_a_known_square():
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:8, 4:8] = 255  # a 4x4 square, centre (5.5, 5.5): 8 px from the middle each way
    ink, mean, spread, offset = statistics(image[None])[0]
    assert ink == pytest.approx(16 / 784)
    assert mean == pytest.approx(16 / 784)
    assert spread == pytest.approx(np.sqrt(2 * 1.25))  # variance of 0..3 is 1.25 per axis
    assert offset == pytest.approx(np.hypot(8, 8))


def test_statistics_are_the_same_for_uint8_and_float_images(mnist_root):
    images = mnist_test_set(mnist_root)[0][:100]
    as_float = images.astype(np.float32)[:, None] / 255
    np.testing.assert_allclose(statistics(images), statistics(as_float), atol=1e-6)


def test_a_blank_image_has_no_spread_and_no_offset():
    assert statistics(np.zeros((1, 28, 28), dtype=np.uint8)).tolist() == [[0, 0, 0, 0]]


def test_reference_bins_hold_a_tenth_of_the_training_digits_each(mnist_root):
    reference = reference_from(mnist_test_set(mnist_root)[0], source="MNIST test")
    for proportions in reference.proportions:
        assert proportions.sum() == pytest.approx(1)
        assert np.all(np.abs(proportions - 0.1) < 0.02)


def test_the_shipped_reference_is_the_mnist_training_set(mnist_root):
    shipped = Reference.load(REFERENCE_FILE)
    rebuilt = mnist_reference(mnist_root)
    assert shipped.source == rebuilt.source == "MNIST train, 60000 digits"
    for ours, theirs in zip(
        shipped.edges + shipped.proportions, rebuilt.edges + rebuilt.proportions, strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_a_window_keeps_only_the_last_inputs(mnist_root):
    images = mnist_test_set(mnist_root)[0]
    window = Window(Reference.load(REFERENCE_FILE), size=100)
    window.add(255 - images[:100])  # inverted: drifted
    assert min(window.psi().values()) > DRIFTED
    for start in range(100, 200, 7):  # pushed out by MNIST digits, a few at a time
        window.add(images[start : min(start + 7, 200)])
    assert window.filled == 100
    fresh = Window(Reference.load(REFERENCE_FILE), size=100)
    fresh.add(images[193:200])
    fresh.add(images[100:193])  # the same 100 digits, in another order
    assert window.psi() == pytest.approx(fresh.psi())


def test_digits_added_one_at_a_time_in_either_dtype_read_as_one_batch(mnist_root):
    """The window queues inputs and bins them together: order and dtype do not change it."""
    images = mnist_test_set(mnist_root)[0][:150]
    reference = Reference.load(REFERENCE_FILE)
    one_at_a_time = Window(reference, size=100, batch=16)
    for i, image in enumerate(images):
        one_at_a_time.add(image[None] if i % 3 else image[None] / 255.0)
        assert one_at_a_time.filled == min(100, i + 1)
    at_once = Window(reference, size=100)
    at_once.add(images[50:])
    assert one_at_a_time.psi() == pytest.approx(at_once.psi())


# ------------------------------------------------------------------ a two-worker server


@pytest.fixture(scope="module")
def two_workers(packaged: Packaged, tmp_path_factory) -> Iterator[str]:
    """`bentoml serve` with two workers on a copy of the packaged model, in a BentoML home of
    its own: BentoML clears the home's Prometheus folder when a server starts."""
    home = tmp_path_factory.mktemp("monitoring-bentoml")
    shutil.copytree(packaged.model_dir.parent, home / "models" / packaged.model_dir.parent.name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bentoml_env(
        home,
        CONVLENS_WORKERS="2",
        CONVLENS_MODEL=packaged.model_tag,
        CONVLENS_FEEDBACK_URL=f"sqlite:///{home / 'feedback.db'}",
    )
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1"]
    with ServerProcess(
        [*command, "--port", str(port)],
        log=home / "serve.log",
        ready_url=f"{url}/readyz",
        env=env,
        cwd=REPO,
        timeout_s=READY_TIMEOUT_S,
        name="bentoml serve (2 workers)",
    ):
        yield url


def scrape(url: str) -> Samples:
    """Every sample of /metrics, by name and sorted labels."""
    answer = httpx.get(f"{url}/metrics", timeout=30)
    assert answer.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def per_worker(samples: Samples, name: str) -> dict[str, dict[str, float]]:
    """{pid: {statistic or "": value}} of a gauge that carries the worker's pid."""
    workers: dict[str, dict[str, float]] = {}
    for (sample, labels), number in samples.items():
        if sample == name:
            labels = dict(labels)
            workers.setdefault(labels["pid"], {})[labels.get("statistic", "")] = number
    return workers


def mnist_sample(root, size: int, seed: int) -> np.ndarray:
    """`size` MNIST test digits drawn at random: the test set is in writer order, and a run of
    a few hundred consecutive digits can drift from the training set's look on its own."""
    images = mnist_test_set(root)[0]
    return images[np.random.default_rng(seed).choice(len(images), size, replace=False)]


def post_batch(url: str, images: np.ndarray) -> list[dict]:
    """/predict_batch on a connection of its own (closed after), so that successive requests
    are accepted by whichever worker is first: both workers get some."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        body = json.dumps({"images": images.astype(int).tolist()})
        headers = {"Content-Type": "application/json", "Connection": "close"}
        connection.request("POST", "/predict_batch", body=body, headers=headers)
        answer = connection.getresponse()
        assert answer.status == 200, answer.read()[:300]
        return json.loads(answer.read())
    finally:
        connection.close()


def post_image(url: str, png: bytes) -> httpx.Response:
    with httpx.Client(timeout=60) as client:  # a connection of its own
        return client.post(f"{url}/predict", files={"image": ("digit.png", png, "image/png")})


def test_batch_predictions_are_counted_per_label_and_version(two_workers, mnist_root, packaged):
    version = packaged.model_labels["mlflow_version"]
    images = mnist_sample(mnist_root, 300, seed=1)
    before = scrape(two_workers)
    answers = []
    for start in range(0, 300, 50):  # six requests: both workers answer some
        answers += post_batch(two_workers, images[start : start + 50])
    after = scrape(two_workers)
    sent = np.bincount([a["label"] for a in answers], minlength=10)
    name = "convlens_predictions_total"
    for label in range(10):
        keys = {"endpoint": "predict_batch", "label": str(label), "model_version": version}
        assert value(after, name, **keys) - value(before, name, **keys) == sent[label]


def test_each_upload_prediction_is_counted_under_its_label(two_workers, mnist_root, packaged):
    version = packaged.model_labels["mlflow_version"]
    name = "convlens_predictions_total"
    before = scrape(two_workers)
    labels = [post_image(two_workers, digit_png(i, mnist_root)).json()["label"] for i in range(8)]
    after = scrape(two_workers)
    for label in set(labels):
        keys = {"endpoint": "predict", "label": str(label), "model_version": version}
        assert value(after, name, **keys) - value(before, name, **keys) == labels.count(label)


def test_bentomls_request_metrics_count_each_predict_answer(two_workers, mnist_root):
    """/predict's shortcut (`serving.shortcut`) answers inside BentoML's metrics middleware."""

    def answered(samples: Samples, code: str) -> float:
        return sum(
            number
            for (sample, labels), number in samples.items()
            if sample == "bentoml_service_request_total"
            and ("endpoint", "/predict") in labels
            and ("http_response_code", code) in labels
        )

    before = scrape(two_workers)
    for i in range(5):
        assert post_image(two_workers, digit_png(i, mnist_root)).status_code == 200
    assert post_image(two_workers, b"not an image").status_code == 400
    after = scrape(two_workers)
    assert answered(after, "200") - answered(before, "200") == 5
    assert answered(after, "400") - answered(before, "400") == 1


def test_confidence_histogram_observes_each_top_probability(two_workers, mnist_root, packaged):
    version = packaged.model_labels["mlflow_version"]
    images = mnist_sample(mnist_root, 100, seed=2)
    before = scrape(two_workers)
    answers = post_batch(two_workers, images[:60]) + post_batch(two_workers, images[60:])
    after = scrape(two_workers)
    top = np.array([max(a["probabilities"]) for a in answers])

    def delta(name: str, **labels: str) -> float:
        return value(after, name, model_version=version, **labels) - value(
            before, name, model_version=version, **labels
        )

    assert delta("convlens_prediction_confidence_count") == 100
    assert delta("convlens_prediction_confidence_sum") == pytest.approx(top.sum(), rel=1e-6)
    for bound in ("0.5", "0.9", "0.99"):
        observed = delta("convlens_prediction_confidence_bucket", le=bound)
        assert observed == np.sum(top <= float(bound))
    assert delta("convlens_prediction_confidence_bucket", le="+Inf") == 100


def test_a_blank_upload_counts_as_a_no_digit_answer(two_workers):
    before = scrape(two_workers)
    answer = post_image(two_workers, png_bytes(np.full((64, 64), 255, dtype=np.uint8)))
    after = scrape(two_workers)
    assert answer.status_code == 422
    assert "no digit" in answer.json()["error"]
    name = "convlens_no_digit_answers_total"
    assert value(after, name) - value(before, name) == 1


def test_feedback_agreement_is_counted_per_model_version(two_workers, mnist_root):
    name = "convlens_feedback_total"
    before = scrape(two_workers)
    for index, (label, predicted) in enumerate([(7, 7), (2, 2), (1, 7)]):
        answer = httpx.post(
            f"{two_workers}/feedback",
            files={"image": ("digit.png", digit_png(index, mnist_root), "image/png")},
            data={"label": str(label), "predicted": str(predicted), "model_version": "41"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    after = scrape(two_workers)
    agreed = value(after, name, model_version="41", agreed="true")
    disagreed = value(after, name, model_version="41", agreed="false")
    assert agreed - value(before, name, model_version="41", agreed="true") == 2
    assert disagreed - value(before, name, model_version="41", agreed="false") == 1


def test_the_windows_fill_across_both_workers(two_workers, mnist_root):
    """Every series above is the sum over both workers' files; the drift windows are each
    worker's own, so /metrics shows one per pid once both have served."""
    for attempt in range(40):
        post_batch(two_workers, mnist_sample(mnist_root, MIN_INPUTS, seed=100 + attempt))
        windows = per_worker(scrape(two_workers), "convlens_input_drift_window_inputs")
        if len(windows) == 2 and all(w[""] >= MIN_INPUTS for w in windows.values()):
            break
    assert len(windows) == 2, windows
    assert all(MIN_INPUTS <= w[""] <= WINDOW for w in windows.values()), windows


def test_drift_is_stable_for_mnist_test_digits(two_workers, mnist_root):
    """Windows of MNIST test digits (and before them the MNIST digits of the tests above):
    each worker's PSI is under 0.1 on every statistic, once its window is full (a window of
    a few hundred digits reads ~0.05 from sampling alone)."""
    for attempt in range(20):  # full windows, on fresh connections, until both are full
        post_batch(two_workers, mnist_sample(mnist_root, WINDOW, seed=200 + attempt))
        samples = scrape(two_workers)
        windows = per_worker(samples, "convlens_input_drift_window_inputs")
        if len(windows) == 2 and all(w[""] == WINDOW for w in windows.values()):
            break
    assert all(w[""] == WINDOW for w in windows.values()), windows
    drift = per_worker(samples, "convlens_input_drift_psi")
    assert drift, "no worker reports a drift score"
    for pid, scores in drift.items():
        assert set(scores) == set(STATISTICS)
        assert max(scores.values()) < STABLE, (pid, scores)


def shrunk_into_a_corner(images: np.ndarray) -> np.ndarray:
    """Each digit at half size in the top-left corner: what a bad crop would send."""
    out = np.zeros_like(images)
    for i, image in enumerate(images):
        out[i, :14, :14] = np.asarray(Image.fromarray(image).resize((14, 14), Image.BILINEAR))
    return out


def test_drift_is_high_for_digits_shrunk_into_a_corner(two_workers, mnist_root):
    before = per_worker(scrape(two_workers), "convlens_input_drift_psi")
    assert all(max(scores.values()) < STABLE for scores in before.values()), before
    post_batch(two_workers, shrunk_into_a_corner(mnist_sample(mnist_root, WINDOW, seed=3)))
    after = per_worker(scrape(two_workers), "convlens_input_drift_psi")
    drifted = [scores for scores in after.values() if min(scores.values()) > DRIFTED]
    assert len(drifted) == 1, after  # the worker that took the batch: its whole window
    assert drifted[0]["centre_offset"] > 1.0


def test_the_bento_ships_the_drift_reference(packaged: Packaged):
    shipped = packaged.bento_dir / "src" / "serving" / REFERENCE_FILE.name
    assert shipped.read_bytes() == REFERENCE_FILE.read_bytes()
