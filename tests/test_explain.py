"""Attribution: `convlens.attribution` on the trained model and real MNIST test digits, and
`/explain` on the real service.

The methods are Captum's; these tests check that their maps mean what the page says they
mean: evidence that sits on the digit's strokes, maps that depend on what the network learned
rather than on the input alone (the model-randomisation check of Adebayo et al., "Sanity Checks
for Saliency Maps", 2018), and a shared network that concurrent requests cannot disturb.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from convlens.artifact import load_logged_net
from convlens.attribution import METHODS, UnknownMethod, attribute, private_copy
from convlens.model import ConvNet
from convlens.preprocessing import normalize
from tests.conftest import MODEL_NAME
from tests.harness import digit_png, mnist_test_set

pytest_plugins = ["tests.serving_fixtures"]

SAMPLE = 100
RANDOMISED_SAMPLE = 20


@pytest.fixture(scope="module")
def net(trained) -> ConvNet:
    """The trained champion, as MLflow logged it, laid out as the service keeps it."""
    client = MlflowClient(trained.tracking_uri, registry_uri=trained.tracking_uri)
    location = client.get_model_version_download_uri(MODEL_NAME, trained.version)
    return load_logged_net(client, location, None).to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def digits(mnist_root) -> list[tuple[torch.Tensor, int]]:
    images, labels = mnist_test_set(mnist_root)
    return [(torch.from_numpy(images[i].copy()), int(labels[i])) for i in range(SAMPLE)]


def randomised(net: ConvNet, seed: int = 0) -> ConvNet:
    """The same architecture with every layer's weights re-initialised (Adebayo et al.'s
    cascading randomisation, taken to the end: no learned weight left)."""
    twin = private_copy(net)
    torch.manual_seed(seed)
    for module in twin.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.reset_parameters()
    return twin


def near_ink(image: torch.Tensor, reach: int = 2) -> torch.Tensor:
    """Pixels with ink, or within `reach` pixels of ink (a (2 reach + 1)^2 dilation)."""
    ink = (image > 0).float()[None, None]
    size = 2 * reach + 1
    return nn.functional.max_pool2d(ink, size, stride=1, padding=reach)[0, 0] > 0


def positive_share_near_ink(values: torch.Tensor, image: torch.Tensor) -> float:
    positive = values.clamp(min=0)
    return float(positive[near_ink(image)].sum() / positive.sum())


def ig_shares(net: ConvNet, digits) -> np.ndarray:
    return np.array(
        [
            positive_share_near_ink(attribute(net, image, label, "integrated_gradients"), image)
            for image, label in digits
        ]
    )


def test_positive_integrated_gradients_mass_lies_on_or_next_to_the_ink(net, digits):
    """Measured on the smoke model (1 epoch on 2,000 digits, 88% test accuracy) and the first
    100 test digits: 94% of the positive IG mass lies within 2 px of the ink on average (10th
    percentile 88%, lowest 80%), where those pixels are 43% of the image. The baseline is the
    mean MNIST pixel, not black, so that empty pixels can carry attribution too (with a black
    baseline IG is zero off the ink by construction, and this test could not fail). The same
    architecture with random weights puts 80% there: strokes are where inputs vary. So: the
    mean share is at least 85%, 9 digits in 10 are at least 70%, and the trained model is more
    on the ink than the random one."""
    shares = ig_shares(net, digits)
    assert shares.mean() >= 0.85, shares.mean()
    assert np.mean(shares >= 0.70) >= 0.9, np.sort(shares)[:15]
    random_shares = ig_shares(randomised(net), digits[:RANDOMISED_SAMPLE])
    assert shares[:RANDOMISED_SAMPLE].mean() > random_shares.mean() + 0.05


@pytest.mark.parametrize("method", list(METHODS))
def test_maps_of_a_randomised_model_differ_from_the_trained_ones(net, digits, method):
    """Spearman rank correlation of the signed maps, trained vs re-initialised weights, per
    digit: 1 would be the same ranking. Measured on the smoke model: about 0.1 for IG,
    Saliency and Occlusion, -0.56 for Grad-CAM (reversed, not similar). The ranks of |map| are
    not used: IG and Occlusion multiply by the input's difference from the baseline, so both
    models' |maps| share the digit's outline (0.75-0.94), the effect Adebayo et al. report for
    input-weighted methods. Threshold: a mean correlation under 0.4."""
    noise = randomised(net)
    rhos = [
        spearmanr(
            attribute(net, image, label, method).flatten(),
            attribute(noise, image, label, method).flatten(),
        ).statistic
        for image, label in digits[:RANDOMISED_SAMPLE]
    ]
    assert np.nanmean(rhos) < 0.4, rhos


def test_an_unknown_method_is_refused(net, digits):
    with pytest.raises(UnknownMethod, match="choose one of integrated_gradients"):
        attribute(net, digits[0][0], 7, "lime")


def test_attribution_leaves_the_shared_network_as_it_was(net, digits):
    before = [p.detach().clone() for p in net.parameters()]
    flags = [p.requires_grad for p in net.parameters()]
    for method in METHODS:
        attribute(net, digits[0][0], 7, method)
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())


def test_concurrent_attributions_and_forwards_on_one_network_agree_with_sequential(net, digits):
    """BentoML runs requests in threads on one network: Grad-CAM's layer hooks and the
    gradients must not see each other's passes, nor the inference-mode forwards."""
    jobs = [(digits[i][0], digits[i][1], method) for i in range(4) for method in METHODS]
    expected = [attribute(net, image, label, method) for image, label, method in jobs]

    def forward(image):
        with torch.inference_mode():
            return net(normalize(image[None]).contiguous(memory_format=torch.channels_last))

    with ThreadPoolExecutor(8) as pool:
        maps = [pool.submit(attribute, net, *job) for job in jobs]
        forwards = [pool.submit(forward, image) for image, _ in digits[:32]]
        results = [m.result() for m in maps]
        for f in forwards:
            f.result()
    for got, want, job in zip(results, expected, jobs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=job[2])


# ------------------------------------------------------------------ /explain


@pytest.fixture(scope="module")
def client(served: str):
    with httpx.Client(base_url=served, timeout=180) as http:
        yield http


def upload(index: int = 0) -> dict:
    return {"image": ("digit.png", digit_png(index), "application/octet-stream")}


def test_explain_png_colours_each_pixel_by_the_sign_of_its_value(client):
    """Red where the value is strongly positive, blue where strongly negative (the 10x10
    block of each input pixel), on the same scale symmetric around 0."""
    data = {"target": "3", "method": "saliency"}
    response = client.post("/explain", files=upload(), data=data)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-explained-class"] == "3"
    assert response.headers["x-predicted-label"] == "7"  # test digit 0 is a 7
    picture = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
    assert picture.shape == (280, 280, 3)
    values = np.array(
        client.post("/explain", files=upload(), data={**data, "format": "json"}).json()[
            "attributions"
        ]
    )
    centres = picture[5::10, 5::10]
    redness = centres[..., 0] - centres[..., 2]
    peak = np.abs(values).max()
    strong_for, strong_against = values > 0.5 * peak, values < -0.5 * peak
    assert strong_for.any() and strong_against.any()
    assert (redness[strong_for] > 60).all() and (redness[strong_against] < -60).all()


@pytest.mark.parametrize("method", list(METHODS))
def test_explain_json_is_the_library_map_of_the_served_model(client, net, method):
    response = client.post("/explain", files=upload(), data={"method": method, "format": "json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["method"], body["target"], body["label"]) == (method, 7, 7)  # default: label
    values = torch.tensor(body["attributions"])
    assert body["shape"] == [28, 28] and values.shape == (28, 28)
    digit = torch.from_numpy(mnist_test_set()[0][0].copy())
    torch.testing.assert_close(values, attribute(net, digit, 7, method), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [({"method": "lime"}, "method"), ({"target": "10"}, "target"), ({"target": "-1"}, "target")],
)
def test_explain_refuses_an_unknown_method_or_class(client, data, fragment):
    response = client.post("/explain", files=upload(), data=data)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and fragment in body["error"], body


def test_concurrent_explain_requests_answer_as_one_alone_does(client):
    data = {"method": "grad_cam", "format": "json"}
    alone = client.post("/explain", files=upload(1), data=data).json()["attributions"]

    def one(i: int) -> httpx.Response:
        if i % 2:
            return client.post("/predict", files=upload(i))
        return client.post("/explain", files=upload(1), data=data)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    for answer in answers[::2]:
        np.testing.assert_allclose(answer.json()["attributions"], alone, rtol=1e-5, atol=1e-7)
