"""Generated input against the real service: Schemathesis from its own OpenAPI document, and
Hypothesis properties over arbitrary arrays and bytes.

Schemathesis (its CLI, as CI would run it) generates over a thousand requests from
`/docs.json`, schema-valid and schema-violating, for every operation, and runs every check on
each answer: no 5xx, status codes, content types, headers and bodies as documented, invalid
input refused, and valid input accepted (`positive_data_acceptance`). The one thing the
document cannot say, that an uploaded file must be a picture of a digit, is configured as the
upload operations' expected statuses (`SCHEMATHESIS_CONFIG`), each with its reason.

The Hypothesis properties say what the schema cannot: any array or any bytes get 200, 400,
413, 415 or 422, never anything else; and a 200 is the same answer every time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

pytest_plugins = ["tests.serving_fixtures"]

CLIENT_STATUSES = {400, 413, 415, 422}
SCHEMATHESIS_SEED = int(os.environ.get("CONVLENS_FUZZ_SEED", "20261126"))
MIN_CASES = 1000
# Schema-valid requests the service rightly refuses, where the document cannot say why: an
# image upload is "a binary file" there, and no schema can say "a picture of a digit". Every
# other operation must accept every schema-valid request (Schemathesis' defaults).
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path = [
    "/predict", "/feature_maps", "/preprocessed", "/building_blocks", "/feedback", "/embed",
    "/explain", "/receptive_field",
]
checks.positive_data_acceptance.expected-statuses = [
    "2xx",
    "400",  # any bytes are "a binary file": empty, not an image, truncated, corrupt
    # (and /receptive_field: a channel or position its layer lacks; each layer has its own)
    "413",  # an image whose header declares more pixels than the limit
    "415",  # a known format the service does not decode (TIFF, PDF, SVG, ...)
    "422",  # a valid image with no digit in it (blank, or no contrast)
    "429",  # the defaults' statuses that are not about the input
    "5xx",  # (5xx fails `not_a_server_error` instead)
]
"""


@pytest.fixture(scope="module")
def http(served: str):
    with httpx.Client(base_url=served, timeout=60) as client:
        yield client


# ------------------------------------------------------------------ Schemathesis


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_schema(served, tmp_path):
    report = tmp_path / "schemathesis.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        f"--config-file={config}",
        "run",
        f"{served}/docs.json",
        "--checks=all",
        "--max-examples=130",  # per operation; fewer where the input space is smaller
        f"--seed={SCHEMATHESIS_SEED}",
        "--workers=1",
        "--request-timeout=30",
        "--generation-database=none",
        "--no-color",
        "--report=json",
        f"--report-json-path={report}",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=480, check=False
    )
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert report.exists(), output
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(f"schemathesis: {cases['generated']} cases, seed {summary['seed']}, {summary['phases']}")
    assert summary["operations"]["tested"] == summary["operations"]["total"] >= 11, summary
    assert summary["failures"] == [] and summary["errors"] == [], output
    assert cases["with_failures"] == cases["errored"] == 0, output
    assert result.returncode == 0, output
    assert cases["generated"] >= MIN_CASES, cases


def test_openapi_document_describes_the_real_answers(http):
    spec = http.get("/docs.json").json()
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["additionalProperties"] is False
    for path in ("/predict", "/predict_batch", "/feature_maps", "/filters", "/model_info"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "415", "422", "429", "503"} <= set(responses), path
        assert "404" not in responses  # BentoML's defaults, which this service never sends
        assert responses["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    for path in ("/feature_maps", "/filters", "/preprocessed"):
        assert "image/png" in spec["paths"][path]["post"]["responses"]["200"]["content"]
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    batch = spec["paths"]["/predict_batch"]["post"]["requestBody"]
    assert batch["required"] is True
    assert len(batch["content"]["application/json"]["schema"]["properties"]["images"]["anyOf"]) == 2


# ------------------------------------------------------------------ Hypothesis properties

FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_answer(response: httpx.Response) -> None:
    """Only 200 or a client error, the latter in the one error shape."""
    assert response.status_code == 200 or response.status_code in CLIENT_STATUSES, (
        response.status_code,
        response.text[:500],
    )
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str), body


def check_prediction(row: dict) -> None:
    probabilities = np.asarray(row["probabilities"], dtype=np.float64)
    assert probabilities.shape == (10,) and np.isfinite(probabilities).all()
    assert (probabilities >= 0).all() and abs(probabilities.sum() - 1) <= 1e-5
    assert row["label"] == int(probabilities.argmax())


DTYPES = st.sampled_from(["uint8", "int16", "int64", "float32", "float64", "bool"])
DIGIT_SHAPES = st.one_of(
    st.tuples(st.integers(1, 3), st.just(28), st.just(28)),
    st.tuples(st.integers(1, 2), st.just(1), st.just(28), st.just(28)),
)
ANY_SHAPE = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=30).filter(
    lambda shape: int(np.prod(shape)) <= 5000
)


@st.composite
def numeric_arrays(draw) -> object:
    """Arrays of any dtype, digit-shaped or not; values mostly valid, some out of range,
    NaN or infinite."""
    dtype = np.dtype(draw(DTYPES))
    shape = draw(st.one_of(DIGIT_SHAPES, DIGIT_SHAPES, ANY_SHAPE))
    if dtype.kind == "f":
        elements = st.one_of(
            st.floats(0, 1, width=dtype.itemsize * 8),
            st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8),
        )
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.one_of(st.integers(0, min(255, info.max)), st.integers(info.min, info.max))
    return draw(hnp.arrays(dtype, shape, elements=elements)).tolist()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


@st.composite
def batch_bodies(draw) -> bytes:
    images = draw(st.one_of(numeric_arrays(), numeric_arrays(), JSON_VALUES))
    wrapper = draw(st.sampled_from(["images", "images", "images", "bare", "other_key"]))
    body = {"images": images} if wrapper == "images" else images
    if wrapper == "other_key":
        body = {"pixels": images}
    return json.dumps(body, allow_nan=True).encode()


@FUZZ
@given(body=batch_bodies())
def test_any_array_gets_a_client_error_or_a_deterministic_prediction(http, body):
    headers = {"content-type": "application/json"}
    response = http.post("/predict_batch", content=body, headers=headers)
    check_answer(response)
    if response.status_code == 200:
        answer = response.json()
        assert isinstance(answer, list) and answer
        for row in answer:
            check_prediction(row)
        again = http.post("/predict_batch", content=body, headers=headers)
        assert again.status_code == 200 and again.json() == answer


FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP"]


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def uploads(draw) -> bytes:
    """Arbitrary bytes; real images of arbitrary pixels; and real images damaged: truncated,
    bytes flipped, bytes inserted."""
    kind = draw(st.sampled_from(["bytes", "image", "damaged", "damaged"]))
    if kind == "bytes":
        return draw(st.binary(max_size=4096))
    pixels = draw(
        hnp.arrays(
            np.uint8,
            st.tuples(st.integers(1, 48), st.integers(1, 48)),
            elements=st.integers(0, 255),
        )
    )
    data = bytearray(encode(pixels, draw(st.sampled_from(FORMATS))))
    if kind == "damaged":
        for _ in range(draw(st.integers(1, 4))):
            action = draw(st.sampled_from(["truncate", "flip", "insert"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if action == "truncate":
                del data[at:]
            elif action == "flip" and data:
                data[at] ^= draw(st.integers(1, 255))
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@FUZZ
@given(data=uploads())
def test_any_upload_gets_a_client_error_or_a_deterministic_prediction(http, data):
    files = {"image": ("upload.bin", data, "application/octet-stream")}
    response = http.post("/predict", files=files)
    check_answer(response)
    if response.status_code == 200:
        answer = response.json()
        check_prediction(answer)
        again = http.post("/predict", files=files)
        assert again.status_code == 200 and again.json() == answer
