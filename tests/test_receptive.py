"""How one value of a feature map comes about (`convlens.receptive`), in the library and as
`/receptive_field` on the real service, checked against the model's own `/feature_maps`."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
import yaml

from convlens.model import ConvNet, activations
from convlens.preprocessing import normalize
from convlens.receptive import OutsideLayer, explain_value, receptive_field
from tests.conftest import REPO
from tests.harness import digit_png, mnist_test_set

pytest_plugins = ["tests.serving_fixtures"]


def architecture(name: str) -> ConvNet:
    spec = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
    torch.manual_seed(0)
    return ConvNet(spec["layers"], spec["input_shape"]).eval()


@pytest.fixture(scope="module")
def digit(mnist_root) -> torch.Tensor:
    return torch.from_numpy(mnist_test_set(mnist_root)[0][0].copy())


def test_receptive_fields_grow_as_the_architecture_says():
    net = architecture("mnist_cnn")
    sizes = {layer: receptive_field(net, layer, 0, 0).size for layer in net.spatial_layer_names()}
    assert sizes == {"conv1": 3, "pool1": 4, "conv2": 8, "pool2": 10}
    deeper = architecture("keras_example")
    assert receptive_field(deeper, "conv3", 0, 0).size == 18  # 10 + (3 - 1) * 4


def test_receptive_field_moves_with_the_output_position():
    net = architecture("mnist_cnn")
    field = receptive_field(net, "pool2", 2, 3)
    assert (field.top, field.left, field.size) == (8, 12, 10)  # stride 4 at pool2


def test_each_field_is_exactly_the_pixels_the_value_depends_on():
    """The value's gradient is zero outside the field and reaches its far corners (on noise,
    so that max pooling has no ties and every window position is someone's maximum)."""
    net = architecture("mnist_cnn")
    noise = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    for layer in net.spatial_layer_names():
        x = normalize(noise).requires_grad_()
        output = activations(net, x, [layer])[layer]
        y0, x0 = output.shape[2] // 2, output.shape[3] // 2
        field = receptive_field(net, layer, y0, x0)
        # a value that is 0 after the ReLU has no gradient: use the sum of the channels
        output[0, :, y0, x0].sum().backward()
        touched = (x.grad[0, 0] != 0).nonzero()
        inside = np.zeros((28, 28), dtype=bool)
        inside[field.top : field.top + field.size, field.left : field.left + field.size] = True
        assert all(inside[y, x] for y, x in touched.tolist()), layer
        # and the field is not larger than needed: its corners do matter
        right = field.left + field.size - 1
        assert touched[:, 0].min() == field.top and touched[:, 1].max() == right


def test_conv1_arithmetic_adds_up_to_the_layers_output(digit):
    net = architecture("mnist_cnn")
    answer = explain_value(net, digit, "conv1", 5, 10, 12)
    conv = answer["conv"]
    products = float(np.sum(np.array(conv["patch"]) * np.array(conv["kernel"])))
    assert conv["sum"] == pytest.approx(products + conv["bias"], abs=1e-6)
    assert answer["value"] == pytest.approx(max(conv["sum"], 0.0), abs=1e-5)
    assert np.array(conv["pixels"]).tolist() == digit[10:13, 12:15].tolist()


def test_conv2_contributions_and_rest_add_up_to_the_sum(digit):
    net = architecture("mnist_cnn")
    conv = explain_value(net, digit, "conv2", 7, 4, 5)["conv"]
    total = sum(c["contribution"] for c in conv["contributions"]) + conv["rest"] + conv["bias"]
    assert conv["in_channels"] == 32
    assert total == pytest.approx(conv["sum"], abs=1e-5)
    sizes = [abs(c["contribution"]) for c in conv["contributions"]]
    assert sizes == sorted(sizes, reverse=True)


def test_pooling_reports_its_window_and_maximum(digit):
    net = architecture("mnist_cnn")
    answer = explain_value(net, digit, "pool1", 3, 6, 7)
    pool = answer["pool"]
    assert pool["max"] == pytest.approx(np.max(pool["window"])) == pytest.approx(answer["value"])
    assert answer["input_window"] == {"top": 12, "left": 14, "height": 2, "width": 2}


def test_a_position_outside_the_layer_is_refused(digit):
    net = architecture("mnist_cnn")
    with pytest.raises(OutsideLayer, match="y 0-4"):
        explain_value(net, digit, "pool2", 0, 5, 0)


# ------------------------------------------------------------------ /receptive_field


@pytest.fixture(scope="module")
def client(served: str):
    with httpx.Client(base_url=served, timeout=120) as http:
        yield http


def upload() -> dict:
    return {"image": ("digit.png", digit_png(0), "application/octet-stream")}


def feature_map_value(client, layer: str, channel: int, y: int, x: int) -> float:
    response = client.post("/feature_maps", files=upload(), data={"layer": layer, "format": "json"})
    assert response.status_code == 200, response.text
    return response.json()["activations"][channel][y][x]


@pytest.mark.parametrize(
    ("layer", "channel", "y", "x"),
    [("conv1", 4, 12, 13), ("pool1", 9, 6, 7), ("conv2", 17, 5, 6), ("pool2", 30, 2, 2)],
)
def test_served_value_is_the_feature_maps_value(client, layer, channel, y, x):
    data = {"layer": layer, "channel": channel, "y": y, "x": x}
    response = client.post("/receptive_field", files=upload(), data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = feature_map_value(client, layer, channel, y, x)
    assert body["value"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if body["conv"]:
        assert body["conv"]["result"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    else:
        assert body["pool"]["max"] == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"layer": "fc1", "channel": 0, "y": 0, "x": 0}, "unknown conv or pooling layer"),
        ({"layer": "pool2", "channel": 64, "y": 0, "x": 0}, "outside"),
        ({"layer": "conv1", "channel": 0, "y": 26, "x": 0}, "outside"),
        ({"layer": "conv1", "channel": -1, "y": 0, "x": 0}, "channel"),
    ],
)
def test_served_receptive_field_refuses_what_the_layer_lacks(client, data, fragment):
    response = client.post("/receptive_field", files=upload(), data=data)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and fragment in body["error"], body
