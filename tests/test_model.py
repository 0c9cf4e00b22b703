"""The CNN architectures: shapes, parameter counts and named activations."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from convlens.model import ConvNet, activations, describe, summary
from tests.conftest import REPO


def build(name: str) -> ConvNet:
    with initialize_config_dir(config_dir=str(REPO / "conf" / "model"), version_base="1.3"):
        return instantiate(compose(config_name=name), _convert_="all")


def test_tutorial_cnn_has_the_keras_parameter_count():
    assert sum(p.numel() for p in build("mnist_cnn").parameters()) == 225_034


def test_keras_example_has_the_keras_parameter_count():
    assert sum(p.numel() for p in build("keras_example").parameters()) == 93_322


@pytest.mark.parametrize("name", ["mnist_cnn", "keras_example"])
def test_model_outputs_ten_logits_per_image(name):
    logits = build(name)(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))  # logits, not probabilities


def test_layers_have_stable_names():
    assert build("mnist_cnn").layer_names == [
        "conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2",
    ]  # fmt: skip


def test_named_activations_have_the_tutorial_shapes():
    maps = activations(
        build("mnist_cnn"), torch.randn(2, 1, 28, 28), ["conv1", "pool1", "conv2", "pool2"]
    )
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "conv1": (32, 26, 26),
        "pool1": (32, 13, 13),
        "conv2": (64, 11, 11),
        "pool2": (64, 5, 5),
    }


def test_conv_activations_include_the_relu():
    maps = activations(build("mnist_cnn"), torch.randn(2, 1, 28, 28), ["conv1"])
    assert maps["conv1"].min() >= 0


def test_activations_of_the_last_layer_are_the_logits():
    net = build("mnist_cnn").eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(activations(net, x, ["fc2"])["fc2"], net(x))


def test_unknown_layer_is_refused_by_name():
    with pytest.raises(KeyError, match="conv9"):
        activations(build("mnist_cnn"), torch.zeros(1, 1, 28, 28), ["conv9"])


def test_architecture_round_trips_through_plain_data():
    net = build("keras_example")
    twin = ConvNet(**net.architecture)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(twin.eval()(x), net.eval()(x))


def test_describe_lists_shapes_and_parameters_per_layer():
    rows = {r["name"]: r for r in describe(build("mnist_cnn"))}
    assert rows["conv2"]["output_shape"] == [64, 11, 11]
    assert rows["fc1"]["parameters"] == 1600 * 128 + 128


def test_summary_states_the_total():
    assert "Total params: 225,034" in summary(build("mnist_cnn"))


def test_unknown_layer_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown layer type 'lstm'"):
        ConvNet([{"name": "x", "type": "lstm"}])
