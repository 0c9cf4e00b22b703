"""Startup without a usable model, and no pickle anywhere on the way to one.

Two short-lived servers, started side by side on temporary BentoML homes: one whose store
holds no model, one holding a copy of the packaged model whose weights had a byte flipped
after packaging. Both must start, say why they are not ready (/readyz 503 with the reason),
keep /livez at 200, and answer every API request with 503 and the reason: never a 500, never a
prediction from weights that are not the registered ones.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.harness import digit_png
from tests.serving_fixtures import (
    Packaged,
    Server,
    bentoml_env,
    start_server,
    stop,
    wait_until_answering,
)

pytest_plugins = ["tests.serving_fixtures"]

REASONS = {
    "empty_store": "is not in the BentoML model store",
    "tampered_weights": "do not match the registered sha256",
}


def tampered_copy(packaged: Packaged, destination: Path) -> Path:
    """A copy of the packaged BentoML home with one byte of the model's weights flipped."""
    shutil.copytree(packaged.bentoml_home, destination)
    weights = destination / packaged.model_dir.relative_to(packaged.bentoml_home)
    weights = weights / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    return destination


@pytest.fixture(scope="module")
def broken(packaged: Packaged, tmp_path_factory) -> Iterator[dict[str, Server]]:
    root = tmp_path_factory.mktemp("broken")
    (root / "empty").mkdir()
    homes = {
        "empty_store": (root / "empty", {}),
        "tampered_weights": (
            tampered_copy(packaged, root / "tampered"),
            {"CONVLENS_MODEL": packaged.model_tag},
        ),
    }
    started = {
        name: start_server(home, root / f"{name}.log", **env) for name, (home, env) in homes.items()
    }
    try:
        for process, server in started.values():
            wait_until_answering(server, process)
        yield {name: server for name, (_, server) in started.items()}
    finally:
        for process, _ in started.values():
            stop(process)


def assert_no_model(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"].startswith("no usable model: ") and reason in body["error"], body


@pytest.mark.parametrize("case", REASONS)
def test_readyz_is_503_with_the_reason_and_livez_stays_200(broken, case):
    with httpx.Client(base_url=broken[case].url, timeout=30) as http:
        assert_no_model(http.get("/readyz"), REASONS[case])
        assert http.get("/livez").status_code == 200
        assert http.get("/healthz").status_code == 200
        assert http.get("/metrics").status_code == 200


def digit_upload() -> dict:
    return {"files": {"image": ("d.png", digit_png(), "image/png")}}


API_REQUESTS = {
    "predict": ("/predict", digit_upload),
    "predict_garbage": ("/predict", lambda: {"files": {"image": ("x", b"junk", "x/y")}}),
    "predict_no_body": ("/predict", dict),
    "predict_huge": ("/predict", lambda: {"content": bytes(20 * 2**20)}),
    "predict_batch": ("/predict_batch", lambda: {"json": {"images": [[[0] * 28] * 28]}}),
    "predict_batch_nan": ("/predict_batch", lambda: {"json": {"images": "NaN"}}),
    "feature_maps": ("/feature_maps", lambda: {**digit_upload(), "data": {"layer": "conv1"}}),
    "filters": ("/filters", lambda: {"json": {"layer": "conv1"}}),
    "preprocessed": ("/preprocessed", digit_upload),
    "building_blocks": (
        "/building_blocks",
        lambda: {**digit_upload(), "data": {"kernel": "blur"}},
    ),
    "model_info": ("/model_info", dict),
}


@pytest.mark.parametrize("case", REASONS)
def test_every_api_route_answers_503_with_the_reason_never_500(broken, case):
    with httpx.Client(base_url=broken[case].url, timeout=30) as http:
        for name, (route, request) in API_REQUESTS.items():
            response = http.post(route, **request())
            assert response.status_code != 500, (name, response.text)
            assert_no_model(response, REASONS[case])
        # What does not need the model still works: the API's description and the web page.
        spec = http.get("/docs.json").json()
        assert "/predict" in spec["paths"] and "Error" in spec["components"]["schemas"]
        assert http.get("/ui/").status_code == 200


def test_the_log_gives_the_full_reason(broken):
    empty = broken["empty_store"].log.read_text()
    assert "no usable model: convlens-mnist:latest is not in the BentoML model store" in empty
    tampered = broken["tampered_weights"].log.read_text()
    assert "refusing" in tampered and "model.safetensors has sha256" in tampered
    for log in (empty, tampered):
        assert "Traceback" not in log


# ------------------------------------------------------------------ no pickle

# What serving runs: every Python file the Bento ships (serving/bentofile.yaml's include list).
BENTO_INCLUDES = yaml.safe_load((REPO / "serving" / "bentofile.yaml").read_text())["include"]
SERVING_SOURCES = sorted(
    {path for pattern in BENTO_INCLUDES for path in REPO.glob(pattern) if path.suffix == ".py"}
)
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}


def test_serving_code_never_unpickles():
    for path in SERVING_SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names]
                if isinstance(node, ast.ImportFrom):
                    names.append(node.module or "")
                found = {name.split(".")[0] for name in names} & UNPICKLING_MODULES
                assert not found, f"{path.name}:{node.lineno} imports {found}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                call = ast.unparse(node.func)
                assert call != "torch.load", f"{path.name}:{node.lineno} calls torch.load"
                if call in ("np.load", "numpy.load"):  # safe only when told to refuse pickles
                    assert "allow_pickle=False" in ast.unparse(node), (
                        f"{path.name}:{node.lineno} calls {call} without allow_pickle=False"
                    )
            if isinstance(node, ast.keyword):
                assert node.arg != "weights_only", f"{path.name}:{node.lineno} passes weights_only="
                if node.arg == "allow_pickle":
                    assert ast.unparse(node.value) == "False", (
                        f"{path.name}:{node.lineno} passes allow_pickle={ast.unparse(node.value)}"
                    )


LOAD_WITHOUT_PICKLE = """
import pickle, sys
import cloudpickle, numpy, torch
import serving.service as service
from serving.inference import class_probabilities

def refuse(*args, **kwargs):
    raise AssertionError("something unpickled while loading the model")

for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                     (cloudpickle, "load"), (cloudpickle, "loads"), (torch, "load"),
                     (numpy, "load")]:
    setattr(module, name, refuse)
model = service.open_model(sys.argv[1])
probabilities = class_probabilities(model.net, torch.zeros(2, 1, 28, 28))
print("loaded", model.tag, tuple(probabilities.shape))
"""


def test_the_served_model_loads_without_unpickling_anything(packaged: Packaged):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PICKLE, packaged.model_tag],
        cwd=REPO,
        env=bentoml_env(packaged.bentoml_home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded {packaged.model_tag} (2, 10)" in result.stdout
