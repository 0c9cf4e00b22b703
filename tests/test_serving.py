"""The BentoML service over real HTTP: the packaged champion, served by `bentoml serve`.

Expected answers come from the same registered model rebuilt in this process from MLflow's
copy of its files, so a wrong import, preprocessing or layout in serving shows up as a
mismatch.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convlens.kernels import KERNELS, convolve2d, max_pool, relu
from convlens.model import ConvNet, activations, describe
from convlens.preprocessing import normalize, to_mnist
from convlens.visuals import feature_map_grid, filter_grid
from convlens.weights import WeightsMismatch
from tests.conftest import MODEL_NAME

pytest_plugins = ["tests.serving_fixtures"]


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="session")
def client(served: str):
    with httpx.Client(base_url=served, timeout=60) as http:
        yield http


@pytest.fixture(scope="session")
def mnist_test(mnist_root) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    dataset = MNIST(str(mnist_root), train=False)
    return dataset.data, dataset.targets


@pytest.fixture(scope="session")
def reference(trained, packaged, tmp_path_factory) -> ConvNet:
    """The packaged version rebuilt here from MLflow's copy of its weights and architecture."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(trained.tracking_uri, registry_uri=trained.tracking_uri)
    version = packaged.model_labels["mlflow_version"]
    location = client.get_model_version_download_uri(MODEL_NAME, version)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/extra_files",
            dst_path=str(tmp_path_factory.mktemp("reference")),
            tracking_uri=trained.tracking_uri,
        )
    )
    net = ConvNet(**json.loads((folder / "architecture.json").read_text()))
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    return net.eval()


@torch.inference_mode()
def probabilities(net: ConvNet, images: torch.Tensor) -> torch.Tensor:
    """In-process class probabilities for uint8 (N, 28, 28) images."""
    return torch.softmax(net(normalize(images)), dim=1)


@pytest.fixture(scope="session")
def confident(mnist_test, reference) -> list[tuple[np.ndarray, int]]:
    """Test digits (28x28 uint8, label) the model gets right with >= 95% probability, one per
    class where there is one: real-world variants of them should not change the answer."""
    images, labels = mnist_test
    probs = probabilities(reference, images[:500])
    chosen: dict[int, int] = {}
    for i, (row, label) in enumerate(zip(probs, labels[:500].tolist(), strict=True)):
        if int(row.argmax()) == label and float(row[label]) >= 0.95 and label not in chosen:
            chosen[label] = i
    assert len(chosen) >= 5, "the smoke model should be confident on several digits"
    return [(images[i].numpy(), label) for label, i in sorted(chosen.items())][:5]


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def upload(data: bytes, name: str = "digit.png") -> dict:
    return {"image": (name, data, "application/octet-stream")}


def expected_label(net: ConvNet, digit: np.ndarray) -> int:
    return int(probabilities(net, torch.from_numpy(digit)[None]).argmax())


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    """The one documented error shape: a 4xx with {"error": "<message>"}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment.lower() in body["error"].lower(), body["error"]


def assert_still_predicts(client: httpx.Client, confident, net: ConvNet) -> None:
    digit, _ = confident[0]
    response = client.post("/predict", files=upload(encode(Image.fromarray(digit))))
    assert response.status_code == 200, response.text
    assert response.json()["label"] == expected_label(net, digit)


# ------------------------------------------------------------------ /predict


def test_predict_matches_the_in_process_model(client, mnist_test, reference):
    images, _ = mnist_test
    for digit in images[:8].numpy():
        data = encode(Image.fromarray(digit))
        response = client.post("/predict", files=upload(data))
        assert response.status_code == 200, response.text
        body = response.json()
        seen = torch.from_numpy(to_mnist(Image.open(io.BytesIO(data))))[None]
        expected = probabilities(reference, seen)[0]
        assert body["label"] == int(expected.argmax())
        np.testing.assert_allclose(body["probabilities"], expected.numpy(), atol=1e-5)


def test_predict_names_the_served_model_version(client, confident, trained):
    digit, _ = confident[0]
    body = client.post("/predict", files=upload(encode(Image.fromarray(digit)))).json()
    assert body["model"] == {"name": MODEL_NAME, "version": str(trained.version)}
    assert len(body["probabilities"]) == 10
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def dark_on_white(digit: np.ndarray) -> Image.Image:
    """A scan-like picture: a large dark digit on a white 300x300 page."""
    page = Image.new("L", (300, 300), 255)
    page.paste(Image.fromarray(255 - digit).resize((200, 200), Image.BILINEAR), (50, 50))
    return page


def transparent(digit: np.ndarray) -> Image.Image:
    """What a drawing canvas exports: black strokes, ink in the alpha channel."""
    alpha = Image.fromarray(digit).resize((140, 140), Image.BILINEAR)
    rgba = Image.new("RGBA", alpha.size, (0, 0, 0, 0))
    rgba.putalpha(alpha)
    return rgba


def off_centre_small(digit: np.ndarray) -> Image.Image:
    canvas = Image.new("L", (320, 240), 0)
    canvas.paste(Image.fromarray(digit).resize((56, 56), Image.BILINEAR), (230, 20))
    return canvas


def animated_gif(digit: np.ndarray) -> bytes:
    """The digit as the first frame, a blank second frame that must be ignored."""
    first = Image.fromarray(digit).convert("P")
    blank = Image.new("P", first.size, 0)
    return encode(first, "GIF", save_all=True, append_images=[blank], duration=100)


REAL_WORLD: dict[str, Callable[[np.ndarray], bytes]] = {
    "dark_digit_on_white_300px_png": lambda d: encode(dark_on_white(d)),
    "rgba_png_with_transparency": lambda d: encode(transparent(d)),
    "jpeg_photo": lambda d: encode(dark_on_white(d).convert("RGB"), "JPEG", quality=85),
    "small_off_centre_digit": lambda d: encode(off_centre_small(d)),
    "palette_png": lambda d: encode(Image.fromarray(d).convert("P")),
    "bmp": lambda d: encode(dark_on_white(d).convert("RGB"), "BMP"),
    "webp": lambda d: encode(dark_on_white(d), "WEBP", lossless=True),
    "gif_first_frame": animated_gif,
}


@pytest.mark.parametrize("variant", REAL_WORLD)
def test_real_world_image_predicts_like_its_mnist_digit(client, confident, reference, variant):
    for digit, _ in confident:
        response = client.post("/predict", files=upload(REAL_WORLD[variant](digit)))
        assert response.status_code == 200, response.text
        assert response.json()["label"] == expected_label(reference, digit)


# ------------------------------------------------------------------ /predict_batch


def test_predict_batch_matches_the_in_process_model(client, mnist_test, reference):
    images, _ = mnist_test
    batch = images[:16]
    response = client.post("/predict_batch", json={"images": batch.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = probabilities(reference, batch)
    assert [row["label"] for row in body] == expected.argmax(1).tolist()
    np.testing.assert_allclose([row["probabilities"] for row in body], expected, atol=1e-5)


def test_predict_batch_takes_nchw_floats_like_uint8(client, mnist_test):
    images, _ = mnist_test
    batch = images[:4]
    as_uint8 = client.post("/predict_batch", json={"images": batch.tolist()}).json()
    floats = (batch.float() / 255).unsqueeze(1)
    as_float = client.post("/predict_batch", json={"images": floats.tolist()}).json()
    assert [r["label"] for r in as_float] == [r["label"] for r in as_uint8]
    np.testing.assert_allclose(
        [r["probabilities"] for r in as_float], [r["probabilities"] for r in as_uint8], atol=1e-6
    )


def batch_histogram(client: httpx.Client) -> tuple[float, float]:
    """(requests, batches) so far in /predict_batch's adaptive-batching histogram."""
    text = client.get("/metrics").text
    values = {}
    for kind in ("sum", "count"):
        pattern = rf'adaptive_batch_size_{kind}{{[^}}]*method_name="predict_batch"[^}}]*}} (\S+)'
        values[kind] = sum(float(v) for v in re.findall(pattern, text))
    return values["sum"], values["count"]


def test_concurrent_batch_requests_are_merged_into_batches(client, mnist_test, reference, served):
    """24 clients on open connections send one image each at the same instant, four times:
    the requests arrive together, so a busy machine's slow arrivals cannot hide batching."""
    images, _ = mnist_test
    clients, rounds = 24, 4
    requests_before, batches_before = batch_histogram(client)
    start = threading.Barrier(clients)

    def one_client(c: int) -> list[list[dict]]:
        answers = []
        with httpx.Client(base_url=served, timeout=60) as http:
            assert http.get("/healthz").status_code == 200  # the connection is open
            for r in range(rounds):
                i = r * clients + c
                start.wait()
                # A client that does what a 503 asks: adaptive batching refuses requests whose
                # expected wait passes max_latency_ms, which a loaded 2-core machine can reach.
                for _ in range(20):
                    response = http.post(
                        "/predict_batch", json={"images": images[i : i + 1].tolist()}
                    )
                    if response.status_code != 503:
                        break
                    time.sleep(float(response.headers["retry-after"]))
                assert response.status_code == 200, response.text
                answers.append(response.json())
        return answers

    with ThreadPoolExecutor(max_workers=clients) as pool:
        by_client = list(pool.map(one_client, range(clients)))
    labels = [by_client[c][r][0]["label"] for r in range(rounds) for c in range(clients)]
    n = clients * rounds
    assert labels == probabilities(reference, images[:n]).argmax(1).tolist()
    requests_after, batches_after = batch_histogram(client)
    assert requests_after - requests_before == n
    assert batches_after - batches_before < n, "no two requests were ever batched together"


# ------------------------------------------------------------------ /feature_maps, /filters


def spatial_layers(net: ConvNet) -> dict[str, list[int]]:
    return {
        r["name"]: r["output_shape"]
        for r in describe(net)
        if r["name"] in net.spatial_layer_names()
    }


def test_feature_maps_png_is_the_layers_grid(client, confident, reference):
    digit, _ = confident[0]
    for layer, shape in spatial_layers(reference).items():
        response = client.post(
            "/feature_maps", files=upload(encode(Image.fromarray(digit))), data={"layer": layer}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        grid = Image.open(io.BytesIO(response.content))
        assert grid.size == feature_map_grid(np.zeros(shape, dtype=np.float32)).size
        assert response.headers["x-predicted-label"] == str(expected_label(reference, digit))


def test_feature_maps_json_equals_in_process_activations(client, confident, reference):
    digit, _ = confident[1]
    data = encode(Image.fromarray(digit))
    x = normalize(torch.from_numpy(to_mnist(Image.open(io.BytesIO(data))))[None])
    for layer, shape in spatial_layers(reference).items():
        response = client.post(
            "/feature_maps", files=upload(data), data={"layer": layer, "format": "json"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        with torch.inference_mode():
            expected = activations(reference, x, [layer])[layer][0].numpy()
        assert body["layer"] == layer and body["shape"] == shape
        assert body["label"] == expected_label(reference, digit)
        np.testing.assert_allclose(np.array(body["activations"]), expected, atol=1e-4)


def test_filters_png_is_the_layers_grid(client, reference):
    for layer in reference.conv_layer_names():
        response = client.post("/filters", json={"layer": layer})
        assert response.status_code == 200, response.text
        weights = getattr(reference, layer).weight.detach().numpy()
        assert Image.open(io.BytesIO(response.content)).size == filter_grid(weights).size


def test_filters_json_are_the_registered_weights(client, reference):
    for layer in reference.conv_layer_names():
        body = client.post("/filters", json={"layer": layer, "format": "json"}).json()
        weights = getattr(reference, layer).weight.detach().numpy()
        assert body["layer"] == layer and body["shape"] == list(weights.shape)
        np.testing.assert_array_equal(np.array(body["weights"], dtype=np.float32), weights)


# ------------------------------------------------------------------ for the web page


def test_preprocessed_is_the_28x28_input_the_model_sees(client, confident):
    digit, _ = confident[2]
    data = encode(dark_on_white(digit))
    response = client.post("/preprocessed", files=upload(data))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    seen = np.asarray(Image.open(io.BytesIO(response.content)))
    np.testing.assert_array_equal(seen, to_mnist(Image.open(io.BytesIO(data))))


def data_url_size(url: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))).size


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_building_blocks_apply_the_tutorial_kernel_by_hand(client, confident, kernel):
    digit, _ = confident[0]
    data = encode(Image.fromarray(digit))
    response = client.post("/building_blocks", files=upload(data), data={"kernel": kernel})
    assert response.status_code == 200, response.text
    body = response.json()
    x = to_mnist(Image.open(io.BytesIO(data))).astype(np.float32) / 255
    conv = convolve2d(x, KERNELS[kernel])
    expected = {"input": x, "conv": conv, "relu": relu(conv), "pool": max_pool(relu(conv))}
    assert body["kernel"] == kernel
    np.testing.assert_allclose(body["weights"], KERNELS[kernel])
    assert list(body["steps"]) == list(expected)
    for name, values in expected.items():
        step = body["steps"][name]
        assert step["shape"] == list(values.shape)
        np.testing.assert_allclose(step["values"], values, atol=1e-5)
        assert data_url_size(step["png"]) == values.shape[::-1]


def test_model_info_describes_the_served_model(client, reference, trained, packaged):
    body = client.post("/model_info").json()
    assert body["name"] == MODEL_NAME and body["version"] == str(trained.version)
    assert body["run_id"] == trained.run_id
    assert body["bento_model"] == packaged.model_tag
    assert body["test_accuracy"] == pytest.approx(float(packaged.model_labels["test_acc"]))
    assert body["layers"] == describe(reference)
    assert body["feature_map_layers"] == reference.spatial_layer_names()
    assert body["input"]["shape"] == [1, 28, 28]


def test_bentoml_health_metrics_and_docs_stay_available(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert "bentoml_service_request" in client.get("/metrics").text
    assert client.get("/").status_code == 200
    paths = client.get("/docs.json").json()["paths"]
    assert {"/predict", "/predict_batch", "/feature_maps", "/filters"} <= set(paths)


def test_a_lone_client_keeps_its_keep_alive_connection(served):
    """One request at a time: the worker has nothing to hand over, so it never closes."""
    from serving.settings import CONFIG

    with httpx.Client(base_url=served, timeout=30) as http:
        closing = [
            http.get("/livez").headers.get("connection", "").lower() == "close"
            for _ in range(3 * CONFIG.requests_per_connection)
        ]
    assert not any(closing)


def test_a_busy_worker_closes_some_connections_so_clients_spread(served, confident):
    """8 clients at once on the one worker of the test server: some answers close their
    connection (every Nth while others wait), and every request is still answered."""
    from serving.settings import CONFIG

    body = encode(Image.fromarray(confident[0][0]))

    def client(_: int) -> list[tuple[int, bool]]:
        with httpx.Client(base_url=served, timeout=60) as http:
            answers = []
            for _ in range(2 * CONFIG.requests_per_connection):
                response = http.post("/predict", files=upload(body))
                closed = response.headers.get("connection", "").lower() == "close"
                answers.append((response.status_code, closed))
            return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [answer for answers in pool.map(client, range(8)) for answer in answers]
    assert {status for status, _ in answers} == {200}
    closed = sum(closed for _, closed in answers)
    assert 1 <= closed <= len(answers) // CONFIG.requests_per_connection


# ------------------------------------------------------------------ bad input


@dataclass(frozen=True)
class Bad:
    route: str
    request: Callable[[], dict]  # httpx keyword arguments, built only when the case runs
    status: int
    says: str


def png_of_size(width: int, height: int) -> bytes:
    return encode(Image.new("L", (width, height), 0), optimize=True)


def truncated_png() -> bytes:
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255
    return encode(Image.fromarray(digit))[:-40]


def batch_of(array) -> dict:
    return {"json": {"images": np.asarray(array).tolist()}}


def raw_json(text: str) -> dict:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def nan_batch(value: str) -> dict:
    rows = [[0] * 28 for _ in range(28)]
    text = json.dumps({"images": [rows]}).replace("0", value, 1)
    return raw_json(text)


def chunked_upload(size: int) -> dict:
    """A multipart body streamed without Content-Length, so only counting can stop it."""

    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(size // 2**20):
            yield bytes(2**20)
        yield b"\r\n--b--\r\n"

    return {"content": body(), "headers": {"content-type": "multipart/form-data; boundary=b"}}


GOOD_PNG = encode(Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)))

BAD_INPUTS: dict[str, Bad] = {
    "not_an_image": Bad(
        "/predict", lambda: {"files": upload(b"hello, world")}, 400, "not an image"
    ),
    "empty_file": Bad("/predict", lambda: {"files": upload(b"")}, 400, "empty"),
    "truncated_png": Bad("/predict", lambda: {"files": upload(truncated_png())}, 400, "truncated"),
    "no_image_field": Bad("/predict", lambda: {"data": {"picture": "x"}}, 400, "image"),
    "empty_body": Bad("/predict", lambda: {"content": b""}, 400, "image"),
    "image_as_text_not_file": Bad(
        "/predict", lambda: {"data": {"image": "digit.png"}}, 400, "uploaded as a file"
    ),
    "over_pixel_limit": Bad(
        "/predict", lambda: {"files": upload(png_of_size(5000, 4000))}, 413, "pixels"
    ),
    "over_image_byte_limit": Bad(
        "/predict", lambda: {"files": upload(b"\x89PNG" + bytes(11 * 2**20))}, 413, "bytes"
    ),
    "over_request_byte_limit": Bad(
        "/predict", lambda: {"files": upload(bytes(17 * 2**20))}, 413, "request body"
    ),
    "over_request_byte_limit_chunked": Bad(
        "/predict", lambda: chunked_upload(17 * 2**20), 413, "request body"
    ),
    "blank_image": Bad("/predict", lambda: {"files": upload(png_of_size(64, 64))}, 422, "no digit"),
    "unknown_feature_map_layer": Bad(
        "/feature_maps",
        lambda: {"files": upload(GOOD_PNG), "data": {"layer": "conv9"}},
        400,
        "conv9",
    ),
    "dense_layer_has_no_feature_maps": Bad(
        "/feature_maps", lambda: {"files": upload(GOOD_PNG), "data": {"layer": "fc1"}}, 400, "fc1"
    ),
    "unknown_format": Bad(
        "/feature_maps",
        lambda: {"files": upload(GOOD_PNG), "data": {"layer": "conv1", "format": "gif"}},
        400,
        "format",
    ),
    "filters_of_a_pooling_layer": Bad(
        "/filters", lambda: {"json": {"layer": "pool1"}}, 400, "pool1"
    ),
    "filters_unknown_format": Bad(
        "/filters", lambda: {"json": {"layer": "conv1", "format": "svg"}}, 400, "format"
    ),
    "unknown_kernel": Bad(
        "/building_blocks",
        lambda: {"files": upload(GOOD_PNG), "data": {"kernel": "emboss"}},
        400,
        "kernel",
    ),
    "batch_wrong_shape": Bad(
        "/predict_batch", lambda: batch_of(np.zeros((2, 27, 28))), 400, "shaped"
    ),
    "batch_ragged_rows": Bad(
        "/predict_batch", lambda: {"json": {"images": [[1, 2], [3]]}}, 400, "ragged"
    ),
    "batch_strings": Bad(
        "/predict_batch", lambda: {"json": {"images": [[["a"] * 28] * 28]}}, 400, "numbers"
    ),
    "batch_nan": Bad("/predict_batch", lambda: nan_batch("NaN"), 400, "nan"),
    "batch_infinity": Bad("/predict_batch", lambda: nan_batch("Infinity"), 400, "infinity"),
    "batch_int_over_255": Bad(
        "/predict_batch", lambda: batch_of(np.full((1, 28, 28), 256)), 400, "0-255"
    ),
    "batch_negative_int": Bad(
        "/predict_batch", lambda: batch_of(np.full((1, 28, 28), -1)), 400, "0-255"
    ),
    "batch_float_over_1": Bad(
        "/predict_batch", lambda: batch_of(np.full((1, 28, 28), 1.5)), 400, "[0, 1]"
    ),
    "batch_empty": Bad("/predict_batch", lambda: {"json": {"images": []}}, 400, "shaped"),
    "batch_over_image_limit": Bad(
        "/predict_batch", lambda: batch_of(np.zeros((1025, 28, 28), np.uint8)), 400, "limit"
    ),
    "batch_missing_field": Bad("/predict_batch", lambda: {"json": {}}, 400, "images"),
    "batch_invalid_json": Bad("/predict_batch", lambda: raw_json("{images: oops"), 400, "json"),
    "pickle_body_refused": Bad(
        "/predict_batch",
        lambda: {"content": b"x", "headers": {"content-type": "application/vnd.bentoml+pickle"}},
        415,
        "pickle",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(client, confident, reference, case):
    bad = BAD_INPUTS[case]
    assert_error(client.post(bad.route, **bad.request()), bad.status, bad.says)
    assert_still_predicts(client, confident, reference)


def test_client_errors_are_logged_without_a_traceback(client, served_server):
    start = len(served_server.log.read_text())
    assert_error(client.post("/predict", files=upload(b"not an image")), 400, "not an image")
    assert_error(client.post("/predict_batch", json={"images": "x"}), 400, "images")
    deadline = time.monotonic() + 10
    while served_server.log.read_text()[start:].count("client error") < 2:
        assert time.monotonic() < deadline, served_server.log.read_text()[start:]
        time.sleep(0.2)
    log = served_server.log.read_text()[start:]
    assert "client error: the upload is not an image" in log
    assert "Traceback" not in log


# ------------------------------------------------------------------ loading the model


def test_service_refuses_weights_that_do_not_match_the_registered_digest(packaged, tmp_path):
    from serving.loading import load_model

    folder = tmp_path / "model"
    shutil.copytree(packaged.model_dir, folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatch, match="sha256"):
        load_model(folder, packaged.model_labels, packaged.model_tag)


def test_service_rebuilds_the_registered_network_from_safetensors(packaged, reference):
    from serving.loading import load_model

    loaded = load_model(packaged.model_dir, packaged.model_labels, packaged.model_tag)
    assert loaded.version == packaged.model_labels["mlflow_version"]
    for (name, value), (_, expected) in zip(
        loaded.net.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), name
