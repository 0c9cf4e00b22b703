"""How the network organises digits: the PCA scatter logged per epoch by the real smoke run,
the t-SNE map `make package` ships with the Bento, and the real service placing digits on it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from convlens.artifact import EMBEDDING_FILE, EMBEDDING_SAMPLE_FILE, TOP_PATCHES_FILE
from convlens.callbacks import EmbeddingPCA
from convlens.embedding import SAMPLE_SIZE, EmbeddingMap, Sample, place, sample_indices
from tests.harness import digit_png, mnist_test_set
from tests.serving_fixtures import start_server, stop, wait_until_ready

pytest_plugins = ["tests.serving_fixtures"]

SMOKE_TEST_DIGITS = 2000  # conf/experiment/smoke.yaml: data.test_subset, the first 2,000


def pca_images(trained) -> dict[int, str]:
    """step -> file name of each PCA picture the run logged (the uncompressed PNGs)."""
    client = MlflowClient(trained.tracking_uri)
    prefix = EmbeddingPCA.KEY.replace("/", "~") + "+step+"
    names = (Path(a.path).name for a in client.list_artifacts(trained.run_id, "images"))
    return {
        int(n[len(prefix) :].split("+")[0]): n
        for n in names
        if n.startswith(prefix) and n.endswith(".png") and "compressed" not in n
    }


def test_the_pca_picture_is_logged_every_epoch_under_one_key(trained):
    client = MlflowClient(trained.tracking_uri)
    epochs = len(client.get_metric_history(trained.run_id, "val/acc"))
    assert sorted(pca_images(trained)) == list(range(epochs + 1))  # step 0: untrained


def test_the_pca_picture_is_wide_like_the_other_cards(trained, tmp_path):
    """Four times as wide as tall: MLflow's image cards show such pictures whole."""
    name = pca_images(trained)[0]
    path = MlflowClient(trained.tracking_uri).download_artifacts(
        trained.run_id, f"images/{name}", str(tmp_path)
    )
    width, height = Image.open(path).size
    assert width >= 4 * height


def test_the_sample_is_fixed_and_drawn_from_the_whole_test_set():
    first, again = sample_indices(10_000), sample_indices(10_000)
    np.testing.assert_array_equal(first, again)
    assert len(set(first.tolist())) == SAMPLE_SIZE and first.max() > 9_000
    assert len(sample_indices(500)) == 500  # a smaller test set: all of it


def test_place_is_the_distance_weighted_mean_of_the_nearest_positions():
    sample = Sample(np.arange(4), np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 3]))
    features = np.array([[0.0, 0], [1, 0], [10, 0], [0, 3]], dtype=np.float32)
    positions = np.array([[0.0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    found = place(np.array([0.25, 0]), EmbeddingMap("fc1", sample, features, positions), k=2)
    assert found.neighbours.tolist() == [0, 1]
    # weights 1/0.25 and 1/0.75: 3/4 of the way to digit 0
    np.testing.assert_allclose(found.position, [0.25, 0], atol=1e-5)


def test_the_bento_model_ships_the_map_of_the_logged_sample(packaged):
    emap = EmbeddingMap.load(packaged.model_dir / EMBEDDING_FILE)
    images, labels = mnist_test_set()
    assert len(emap.positions) == min(SAMPLE_SIZE, SMOKE_TEST_DIGITS)
    np.testing.assert_array_equal(emap.sample.images, images[emap.sample.test_indices])
    np.testing.assert_array_equal(emap.sample.labels, labels[emap.sample.test_indices])
    assert emap.features.shape == (len(emap.positions), 128)  # fc1, after its ReLU
    assert emap.positions.min() >= 0 and emap.positions.max() <= 1


def test_embedding_answers_every_point_with_its_label(served):
    answer = httpx.post(f"{served}/embedding", json={}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    _, labels = mnist_test_set()
    assert body["count"] == len(body["positions"]) == len(body["labels"]) == 2000
    assert body["layer"] == "fc1" and body["method"] == "t-SNE"
    assert all(len(p) == 2 and 0 <= p[0] <= 1 and 0 <= p[1] <= 1 for p in body["positions"])
    assert body["labels"] == labels[body["test_indices"]].tolist()
    assert set(body["labels"]) == set(range(10))


def test_the_sprite_holds_every_map_digit(served):
    body = httpx.post(f"{served}/embedding", json={}, timeout=60).json()
    answer = httpx.post(f"{served}/embedding_sprite", json={}, timeout=60)
    assert answer.headers["content-type"] == "image/png"
    sprite = np.asarray(Image.open(io.BytesIO(answer.content)))
    images, _ = mnist_test_set()
    cols = body["sprite_columns"]
    for i in (0, 777, len(body["labels"]) - 1):
        r, c = divmod(i, cols)
        tile = sprite[r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28]
        np.testing.assert_array_equal(tile, images[body["test_indices"][i]])


# Held-out test digits: beyond the smoke run's 2,000, so in no sample.
PLACED = [2000 + i for i in range(40)]


def test_nearest_map_digits_mostly_share_the_label_of_a_real_digit(served):
    """The last hidden layer groups digits by class: for real test digits the map has never
    seen, on average at least 7 of the 10 nearest map digits have the digit's own label (chance:
    1 in 10; the smoke model, one epoch on 2,000 images, reaches ~85% test accuracy)."""
    _, labels = mnist_test_set()
    shares = []
    for index in PLACED[:12]:
        answer = httpx.post(
            f"{served}/embed", files={"image": ("d.png", digit_png(index))}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["neighbours"]) == 10
        assert 0 <= body["position"][0] <= 1 and 0 <= body["position"][1] <= 1
        distances = [n["distance"] for n in body["neighbours"]]
        assert distances == sorted(distances)
        shares.append(np.mean([n["label"] == labels[index] for n in body["neighbours"]]))
    assert np.mean(shares) >= 0.7, shares


def test_embed_refuses_a_blank_image_like_predict(served):
    blank = Image.new("L", (28, 28), 0)
    buffer = io.BytesIO()
    blank.save(buffer, format="PNG")
    answer = httpx.post(
        f"{served}/embed", files={"image": ("b.png", buffer.getvalue())}, timeout=60
    )
    assert answer.status_code == 422 and set(answer.json()) == {"error"}


@pytest.fixture(scope="module")
def old_model_server(packaged, tmp_path_factory):
    """The packaged model as a model packaged before maps and patches existed: their files
    removed from a copy of the BentoML home (the weights, and their sha256, unchanged)."""
    home = tmp_path_factory.mktemp("old-bentoml") / "home"
    shutil.copytree(packaged.bentoml_home, home, symlinks=True)
    model_dir = home / packaged.model_dir.relative_to(packaged.bentoml_home)
    for name in (EMBEDDING_FILE, EMBEDDING_SAMPLE_FILE, TOP_PATCHES_FILE):
        (model_dir / name).unlink()
    process, server = start_server(
        home, tmp_path_factory.mktemp("old-serve") / "serve.log", CONVLENS_MODEL=packaged.model_tag
    )
    try:
        wait_until_ready(process)
        yield server.url
    finally:
        stop(process)


@pytest.mark.parametrize(
    "path, fields",
    [
        ("/embedding", {}),
        ("/embedding_sprite", {}),
        ("/top_patches", {"layer": "conv1", "channel": 0}),
    ],
)
def test_a_model_packaged_before_maps_existed_answers_404_with_the_reason(
    old_model_server, path, fields
):
    answer = httpx.post(f"{old_model_server}{path}", json=fields, timeout=60)
    assert answer.status_code == 404, answer.text
    assert "packaged without" in answer.json()["error"]


def test_a_model_packaged_before_maps_existed_still_predicts(old_model_server):
    answer = httpx.post(
        f"{old_model_server}/predict", files={"image": ("d.png", digit_png(0))}, timeout=60
    )
    assert answer.status_code == 200, answer.text
