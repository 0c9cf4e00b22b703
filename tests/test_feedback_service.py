"""POST /feedback on the real service: `bentoml serve` over HTTP, storing into a real SQLite
file (the session's `served` server) or a real PostgreSQL that is stopped mid-test."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from convlens.feedback import FeedbackStore, sha256_of
from tests.harness import digit_png
from tests.serving_fixtures import start_server, stop, wait_until_ready

pytest_plugins = ["tests.serving_fixtures", "tests.postgres_cluster"]


@pytest.fixture(scope="module")
def http(served: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, timeout=60) as client:
        yield client


@pytest.fixture
def stored(served_feedback_url: str) -> Iterator[FeedbackStore]:
    """The served service's feedback database, read directly."""
    store = FeedbackStore(served_feedback_url)
    try:
        yield store
    finally:
        store.close()


def send(client: httpx.Client, image: bytes, **fields: object) -> httpx.Response:
    form = {key: str(value) for key, value in fields.items()}
    return client.post("/feedback", files={"image": ("digit.png", image, "image/png")}, data=form)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], body


def test_feedback_keeps_the_upload_and_the_digit_the_model_saw(http, stored):
    image = digit_png(3)
    prediction = http.post("/predict", files={"image": ("d.png", image, "image/png")}).json()
    version = prediction["model"]["version"]
    response = send(http, image, label=1, predicted=prediction["label"], model_version=version)
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt == {
        "sha256": sha256_of(image),
        "created": True,
        "label": 1,
        "message": "saved",
    }
    record = stored.get(receipt["sha256"])
    seen = http.post("/preprocessed", files={"image": ("d.png", image, "image/png")})
    assert record.image == image
    assert np.array_equal(record.digit, np.asarray(Image.open(io.BytesIO(seen.content))))
    assert (record.label, record.predicted, record.model_version) == (
        1,
        prediction["label"],
        version,
    )


def test_the_same_image_again_is_the_same_row(http, stored):
    image = digit_png(4)
    first = send(http, image, label=4, predicted=4, model_version="1").json()
    before = sum(stored.counts().values())
    again = send(http, image, label=4, predicted=4, model_version="1")
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["sha256"] == first["sha256"]
    assert sum(stored.counts().values()) == before


def test_a_corrected_label_replaces_the_first_one(http, stored):
    image = digit_png(5)
    send(http, image, label=2, predicted=1, model_version="1")
    corrected = send(http, image, label=1, predicted=1, model_version="1")
    assert corrected.json()["message"] == "saved before; its label is now 1"
    assert stored.get(sha256_of(image)).label == 1


def test_only_the_label_and_the_image_are_needed(http, stored):
    image = digit_png(6)
    assert send(http, image, label=6).status_code == 200
    record = stored.get(sha256_of(image))
    assert (record.label, record.predicted, record.model_version) == (6, None, None)


@pytest.mark.parametrize("label", ["10", "-1", "seven", "", "3.5"])
def test_a_label_that_is_not_a_digit_is_400(http, stored, label):
    image = digit_png(7)
    assert_error(send(http, image, label=label), 400, "label")
    assert stored.get(sha256_of(image)) is None


def test_a_missing_label_is_400(http):
    assert_error(send(http, digit_png(8)), 400, "label")


def test_a_model_version_over_200_characters_is_400(http, stored):
    image = digit_png(9)
    assert_error(send(http, image, label=1, model_version="v" * 201), 400, "model_version")
    assert stored.get(sha256_of(image)) is None


def test_an_upload_that_is_not_an_image_is_400_and_a_blank_one_422(http, stored):
    assert_error(send(http, b"not an image at all", label=1), 400, "not an image")
    blank = png(np.full((28, 28), 255))
    assert_error(send(http, blank, label=1), 422, "no digit")
    assert stored.get(sha256_of(blank)) is None


def test_the_document_describes_feedback_and_its_503(http):
    operation = http.get("/docs.json").json()["paths"]["/feedback"]["post"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "feedback database" in operation["responses"]["503"]["description"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    label = form["properties"]["label"]
    assert (label["minimum"], label["maximum"]) == (0, 9)
    assert set(form["required"]) == {"image", "label"}


# ------------------------------------------------------------------ outages and restarts


def serve(packaged, tmp_path, url: str):
    """Another `bentoml serve` of the packaged model, storing feedback at `url`."""
    env = {"CONVLENS_MODEL": packaged.model_tag, "CONVLENS_FEEDBACK_URL": url}
    process, server = start_server(packaged.bentoml_home, tmp_path / "serve.log", **env)
    wait_until_ready(process)
    return process, server


def test_postgres_down_is_503_with_the_reason_and_keeps_every_row(packaged, cluster, tmp_path):
    url = cluster.create_database("served_feedback")
    process, server = serve(packaged, tmp_path, url)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert send(client, digit_png(10), label=0, predicted=0, model_version="1").is_success
            cluster.stop()
            try:
                down = send(client, digit_png(11), label=1, predicted=1, model_version="1")
                assert_error(down, 503, "feedback database is unavailable", "refused")
                assert down.headers["retry-after"] == "30"
                assert client.get("/readyz").status_code == 200  # predictions go on
            finally:
                cluster.start()
            back = send(client, digit_png(11), label=1, predicted=1, model_version="1")
            assert back.status_code == 200 and back.json()["created"] is True, back.text
    finally:
        stop(process)
    rows = cluster.query("served_feedback", "SELECT sha256, label FROM feedback ORDER BY label")
    assert rows == [(sha256_of(digit_png(10)), 0), (sha256_of(digit_png(11)), 1)]


def test_a_restarted_service_keeps_the_rows(packaged, tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    process, server = serve(packaged, tmp_path, url)
    try:
        first = send(httpx.Client(base_url=server.url, timeout=60), digit_png(12), label=5)
        assert first.json()["created"] is True
    finally:
        stop(process)
    process, server = serve(packaged, tmp_path, url)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            again = send(client, digit_png(12), label=5)
            assert again.status_code == 200 and again.json()["created"] is False
    finally:
        stop(process)
    assert FeedbackStore(url).counts() == {5: 1}


def test_a_database_that_cannot_be_written_is_503(packaged, tmp_path):
    """A read-only SQLite database (SQLite's own "attempt to write a readonly database")."""
    path = tmp_path / "feedback.db"
    FeedbackStore(f"sqlite:///{path}").add(digit_png(13), np.zeros((28, 28), np.uint8), 3, 3, "1")
    process, server = serve(packaged, tmp_path, f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert_error(send(client, digit_png(14), label=4), 503, "read-only")
    finally:
        stop(process)
    assert FeedbackStore(f"sqlite:///{path}").counts() == {3: 1}
