"""Phone photos of handwritten digits (tests/photos.py) read as well as the same digits sent
clean: through `to_mnist`, and through the real service's /predict."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from convlens.artifact import load_logged_net
from convlens.model import ConvNet
from convlens.preprocessing import NoDigitError, normalize, to_mnist
from tests.conftest import MODEL_NAME
from tests.harness import mnist_test_set, png_bytes
from tests.photos import RANGES, make_photo, photo_jpeg

pytest_plugins = ["tests.serving_fixtures"]

COUNT = 200  # MNIST test digits, each sent clean and as a photo
GOAL = 0.95  # photo accuracy / clean accuracy
SEED = 12_000  # photo i of the set is drawn with SEED + i


@pytest.fixture(scope="module")
def digits(mnist_root) -> tuple[np.ndarray, np.ndarray]:
    images, labels = mnist_test_set(mnist_root)
    return images[:COUNT], labels[:COUNT]


@pytest.fixture(scope="module")
def photos(digits) -> list[bytes]:
    return [photo_jpeg(digit, SEED + i) for i, digit in enumerate(digits[0])]


@pytest.fixture(scope="module")
def net(trained) -> ConvNet:
    client = MlflowClient(trained.tracking_uri, registry_uri=trained.tracking_uri)
    location = client.get_model_version_download_uri(MODEL_NAME, trained.version)
    return load_logged_net(client, location, None).eval()


def accuracy(net: ConvNet, seen: list[np.ndarray], labels: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = net(normalize(torch.from_numpy(np.stack(seen)))).argmax(1).numpy()
    return float((predicted == labels).mean())


def read(data: bytes) -> np.ndarray:
    try:
        return to_mnist(Image.open(io.BytesIO(data)))
    except NoDigitError:
        return np.zeros((28, 28), np.uint8)  # counted as a wrong answer


# ------------------------------------------------------------------ the generator


def test_photos_are_the_same_for_the_same_seed_and_differ_between_seeds(digits):
    assert photo_jpeg(digits[0][0], 7) == photo_jpeg(digits[0][0], 7)
    assert photo_jpeg(digits[0][0], 7) != photo_jpeg(digits[0][0], 8)


def test_photos_vary_over_every_hard_case(digits):
    styles = [make_photo(digit, SEED + i)[1] for i, digit in enumerate(digits[0][:60])]
    heights = [(s.digit_box[3] - s.digit_box[1]) / min(s.width, s.height) for s in styles]
    assert min(heights) < 0.2 and max(heights) > 0.45
    assert {s.light for s in styles} == {"linear", "radial", "both"}
    assert 0.2 < np.mean([s.ruled_line for s in styles]) < 0.6
    assert 0.1 < np.mean([s.edge for s in styles]) < 0.4
    assert len({(s.width, s.height) for s in styles}) > 50
    qualities = [s.jpeg_quality for s in styles]
    assert min(qualities) < 45 and max(qualities) > 80
    low, high = RANGES["tilt_deg"]
    assert all(low <= s.tilt_deg <= high for s in styles)


def test_light_makes_the_dark_paper_darker_than_faint_ink_on_the_bright_side(digits):
    """No single gray level separates ink from paper in most photos: the old `to_mnist`, one
    background level for the whole image, took the dark side of the page for ink."""
    styles = [make_photo(digit, SEED + i)[1] for i, digit in enumerate(digits[0][:60])]
    darker = [s.darkest_paper < s.faintest_ink_on_brightest_paper for s in styles]
    assert np.mean(darker) > 0.4


# ------------------------------------------------------------------ to_mnist


def test_to_mnist_keeps_95_percent_of_clean_accuracy_on_photos(net, digits, photos):
    images, labels = digits
    clean = accuracy(net, [read(png_bytes(d)) for d in images], labels)
    photo = accuracy(net, [read(p) for p in photos], labels)
    assert clean > 0.8, f"the model reads only {clean:.1%} of clean digits: too weak to compare"
    assert photo / clean >= GOAL, f"photos {photo:.1%} vs clean {clean:.1%}"


def test_a_photo_of_blank_paper_has_no_digit():
    """Blank paper, ruled or not, with dust, uneven light and the page's edge: neither what
    line removal leaves of a ruled line nor a corner of shading passes for a digit."""
    blank = np.zeros((28, 28), np.uint8)
    pages = [make_photo(blank, seed) for seed in range(24)]
    assert 4 <= sum(style.ruled_line for _, style in pages) <= 20
    for image, _ in pages:
        with pytest.raises(NoDigitError, match="no digit"):
            to_mnist(image)


def test_the_digit_fills_mnists_box_whatever_its_size_in_the_photo(digits):
    for i, digit in enumerate(digits[0][:20]):
        seen = read(photo_jpeg(digit, SEED + i))
        rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= 19, i


# ------------------------------------------------------------------ through the service


def predict(client: httpx.Client, data: bytes) -> int | None:
    response = client.post("/predict", files={"image": ("digit", data, "image/jpeg")})
    if response.status_code == 422:
        return None
    assert response.status_code == 200, response.text
    return int(response.json()["label"])


def test_predict_keeps_95_percent_of_clean_accuracy_on_photos(served, digits, photos):
    images, labels = digits
    with httpx.Client(base_url=served, timeout=60) as client:
        clean = np.mean(
            [predict(client, png_bytes(d)) == y for d, y in zip(images, labels, strict=True)]
        )
        photo = np.mean([predict(client, p) == y for p, y in zip(photos, labels, strict=True)])
    assert clean > 0.8, f"the served model reads only {clean:.1%} of clean digits"
    assert photo / clean >= GOAL, f"photos {photo:.1%} vs clean {clean:.1%}"


def test_preprocessed_shows_what_the_model_saw_in_a_photo(served, photos):
    with httpx.Client(base_url=served, timeout=60) as client:
        files = {"image": ("p.jpg", photos[3], "image/jpeg")}
        response = client.post("/preprocessed", files=files)
    assert response.status_code == 200, response.text
    shown = np.asarray(Image.open(io.BytesIO(response.content)))
    np.testing.assert_array_equal(shown, to_mnist(Image.open(io.BytesIO(photos[3]))))
