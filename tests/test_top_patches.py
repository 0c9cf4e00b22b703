"""What a filter looks for: each conv channel's nine top test patches, computed at the end of
the real smoke run, logged with its model, packaged into the Bento and served."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from convlens.artifact import EXTRA_FILES, TOP_PATCHES_FILE
from convlens.model import activations
from convlens.preprocessing import normalize
from convlens.receptive import receptive_field
from convlens.top_patches import TOP_K, load
from convlens.weights import load_weights
from tests.conftest import MODEL_NAME
from tests.harness import mnist_test_set

pytest_plugins = ["tests.serving_fixtures"]

SMOKE_TEST_DIGITS = 2000  # conf/experiment/smoke.yaml: data.test_subset, the first 2,000


@pytest.fixture(scope="module")
def logged(trained, tmp_path_factory) -> Path:
    """The registered model's extra files, downloaded."""
    client = MlflowClient(trained.tracking_uri)
    location = client.get_model_version_download_uri(MODEL_NAME, trained.version)
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{location.rstrip('/')}/{EXTRA_FILES}",
        dst_path=str(tmp_path_factory.mktemp("logged")),
        tracking_uri=trained.tracking_uri,
    )
    return Path(folder)


def test_the_logged_model_holds_top_patches_for_every_conv_channel(logged):
    found = load(logged / TOP_PATCHES_FILE)
    assert sorted(found) == ["conv1", "conv2"]
    assert found["conv1"].patches.shape == (32, TOP_K, 3, 3)
    assert found["conv2"].patches.shape == (64, TOP_K, 8, 8)
    for lp in found.values():
        assert (np.diff(lp.values, axis=1) <= 0).all()  # strongest first
        assert all(len(set(row)) == TOP_K for row in lp.images.tolist())  # nine distinct digits


@pytest.mark.parametrize("layer, channel", [("conv1", 7), ("conv2", 21)])
def test_patches_are_the_argmax_patches(logged, layer, channel):
    """Recomputed by brute force for one channel: every test digit's maximum over positions,
    the nine largest, and the receptive field at each one's argmax."""
    net = load_weights(logged)
    images, _ = mnist_test_set()
    images = torch.from_numpy(np.array(images[:SMOKE_TEST_DIGITS]))
    with torch.inference_mode():
        maps = activations(net, normalize(images), [layer])[layer][:, channel]
    best = maps.flatten(1).max(dim=1).values
    expected = best.topk(TOP_K).values.numpy()
    lp = load(logged / TOP_PATCHES_FILE)[layer]
    np.testing.assert_allclose(lp.values[channel], expected, rtol=1e-4, atol=1e-5)
    for rank in range(TOP_K):
        digit = int(lp.images[channel, rank])
        y, x = (int(v) for v in lp.positions[channel, rank])
        assert float(maps[digit, y, x]) == pytest.approx(float(best[digit]), rel=1e-5)
        field = receptive_field(net, layer, y, x)
        window = images[
            digit, field.top : field.top + field.size, field.left : field.left + field.size
        ]
        np.testing.assert_array_equal(lp.patches[channel, rank], window.numpy())


def test_a_grid_per_conv_layer_is_logged_to_the_run(trained):
    names = {
        Path(a.path).name
        for a in MlflowClient(trained.tracking_uri).list_artifacts(trained.run_id, "evaluation")
    }
    assert {"top_patches_conv1.png", "top_patches_conv2.png"} <= names


def test_the_bento_model_holds_top_patches(packaged, logged):
    shipped = packaged.model_dir / TOP_PATCHES_FILE
    assert shipped.read_bytes() == (logged / TOP_PATCHES_FILE).read_bytes()


def decoded(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def test_top_patches_endpoint_answers_the_shipped_patches(served, logged):
    lp = load(logged / TOP_PATCHES_FILE)["conv2"]
    answer = httpx.post(f"{served}/top_patches", json={"layer": "conv2", "channel": 5}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["layer"], body["channel"], body["channels"], body["receptive_field"]) == (
        "conv2",
        5,
        64,
        8,
    )
    assert [p["test_index"] for p in body["patches"]] == lp.images[5].tolist()
    assert [p["activation"] for p in body["patches"]] == pytest.approx(lp.values[5].tolist())
    first = body["patches"][0]
    assert first["window"]["height"] == first["window"]["width"] == 8
    patch = np.asarray(decoded(first["png"]).resize((8, 8), Image.NEAREST))
    np.testing.assert_array_equal(patch, lp.patches[5, 0])
    assert decoded(first["context_png"]).size[0] >= 28


@pytest.mark.parametrize(
    "fields", [{"layer": "conv1", "channel": 32}, {"layer": "pool1", "channel": 0}]
)
def test_a_channel_or_layer_without_patches_is_a_400(served, fields):
    answer = httpx.post(f"{served}/top_patches", json=fields, timeout=60)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"}
