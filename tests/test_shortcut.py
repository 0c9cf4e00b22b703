"""/predict beside BentoML's request path (`serving.shortcut`): a well-formed upload is
answered by the shortcut, anything else reaches BentoML with its body as it came, and over
HTTP the two paths give the same answer. Its speed is `make bench`'s (`benchmarks.peers`)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest

from convlens.images import ImageError
from serving.shortcut import PredictShortcut
from serving.traffic import APIThreads, InFlight
from tests.harness import digit_png, png_bytes

pytest_plugins = ["tests.serving_fixtures"]

BOUNDARY = "convlens-test-boundary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
PNG_BYTES = b"\x89PNG not really, the answer below does not decode it"


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart body of (field, content, filename or None for a text field) parts."""
    chunks = []
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"\r\nContent-Type: image/png'
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        chunks.append(head + content + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


class BentoMLPath:
    """Stands for BentoML's path inside the shortcut: records what it was given."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.messages: list[dict] = []

    async def __call__(self, scope: dict, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            self.messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"bentoml"})


def answer(data: bytes) -> bytes:
    if data == b"a bug":
        raise RuntimeError("the shortcut has a bug")
    if data != PNG_BYTES:
        raise ImageError("not the digit")
    return json.dumps({"label": 7, "thread": threading.current_thread().name}).encode()


def scope(
    method: str = "POST", content_type: str = FORM, query: bytes = b"", length: int | None = 300
) -> dict:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": "http",
        "method": method,
        "path": "/predict",
        "query_string": query,
        "headers": headers,
    }


def thread_name(data: bytes) -> bytes:
    return json.dumps({"thread": threading.current_thread().name}).encode()


def png(side: int) -> bytes:
    return png_bytes(np.zeros((side, side), dtype=np.uint8))


def run(scope: dict, chunks: list[bytes], disconnect: bool = False, alone: bool = False, **kw):
    """The shortcut over a fake BentoML path: (what was sent back, the path). Unless `alone`,
    the worker holds another request besides this one."""
    inner = BentoMLPath()
    held = InFlight()
    held.count = kw.get("count", 1 if alone else 2)
    shortcut = PredictShortcut(
        inner,
        route="/predict",
        field="image",
        answer=kw.get("answer", answer),
        threads=APIThreads(1),
        held=held,
        headers=[(b"server", b"BentoML Service/convlens")],
    )
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1 or disconnect}
        for i, chunk in enumerate(chunks)
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(shortcut(scope, receive, send))
    return sent, inner


def test_a_well_formed_upload_is_answered_by_the_shortcut_on_the_api_thread():
    body = form(("image", PNG_BYTES, "digit.png"))
    sent, inner = run(scope(), [body[:50], body[50:]])
    assert inner.bodies == []
    start, content = sent
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"server"] == b"BentoML Service/convlens"
    assert int(headers[b"content-length"]) == len(content["body"])
    answered = json.loads(content["body"])
    assert answered["label"] == 7 and answered["thread"].startswith("convlens-api")


def test_a_small_upload_that_is_the_workers_only_request_is_classified_on_the_event_loop():
    body = form(("image", png(28), "digit.png"))
    sent, _ = run(scope(), [body], alone=True, answer=thread_name)
    assert json.loads(sent[1]["body"])["thread"] == threading.current_thread().name


def test_beside_another_request_a_small_upload_is_classified_on_the_api_thread():
    body = form(("image", png(28), "digit.png"))
    sent, _ = run(scope(), [body], alone=False, answer=thread_name)
    assert json.loads(sent[1]["body"])["thread"].startswith("convlens-api")


def test_an_upload_refused_on_the_event_loop_reaches_bentoml_as_it_came():
    threads = []

    def no_digit(data: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        raise ImageError("no digit in the image")

    body = form(("image", png(28), "blank.png"))
    sent, inner = run(scope(), [body], alone=True, answer=no_digit)
    assert threads == [threading.current_thread().name]
    assert inner.bodies == [body] and sent[0]["status"] == 418


def test_a_large_image_is_classified_on_the_api_thread_even_alone():
    side = int(PredictShortcut.inline_pixels**0.5) + 1
    sent, _ = run(scope(), [form(("image", png(side), "big.png"))], alone=True, answer=thread_name)
    assert json.loads(sent[1]["body"])["thread"].startswith("convlens-api")


def test_a_large_file_is_classified_on_the_api_thread_even_alone():
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    data = png_bytes(noise)  # noise: little compression
    assert len(data) > PredictShortcut.inline_bytes
    sent, _ = run(scope(), [form(("image", data, "noise.png"))], alone=True, answer=thread_name)
    assert json.loads(sent[1]["body"])["thread"].startswith("convlens-api")


def test_a_shortcut_whose_requests_nobody_counts_never_holds_the_loop():
    sent, _ = run(scope(), [form(("image", png(28), "digit.png"))], answer=thread_name, count=0)
    assert json.loads(sent[1]["body"])["thread"].startswith("convlens-api")


@pytest.mark.parametrize(
    "body",
    [
        form(("image", PNG_BYTES, "digit.png"), ("extra", b"1", None)),
        form(("picture", PNG_BYTES, "digit.png")),
        form(("image", b"digit.png", None)),
        form(("image", PNG_BYTES, "a.png"), ("image", PNG_BYTES, "b.png")),
        form(("image", b"something else", "digit.png")),
        form(),
        b"--" + BOUNDARY.encode() + b"\r\nnot a form at all",
    ],
    ids=[
        "extra-field",
        "other-field",
        "text-not-file",
        "two-files",
        "answer-refuses",
        "empty-form",
        "malformed",
    ],
)
def test_a_form_the_shortcut_does_not_answer_reaches_bentoml_as_it_came(body: bytes):
    sent, inner = run(scope(), [body[:7], body[7:]])
    assert inner.bodies == [body]
    assert sent[0]["status"] == 418


@pytest.mark.parametrize(
    "request_scope",
    [
        scope(content_type="application/json"),
        scope(content_type=""),
        scope(method="PUT"),
        scope(query=b"layer=conv1"),
        {**scope(), "path": "/feature_maps"},
        scope(length=None),
        scope(length=PredictShortcut.max_body_bytes + 1),
    ],
    ids=["json", "no-content-type", "put", "query-string", "other-route", "chunked", "large"],
)
def test_other_requests_go_straight_to_bentoml(request_scope: dict):
    body = form(("image", PNG_BYTES, "digit.png"))
    sent, inner = run(request_scope, [body])
    assert inner.bodies == [body] and sent[0]["status"] == 418


def test_a_client_error_falls_back_quietly_and_a_bug_with_a_warning(caplog):
    refused = form(("image", b"not a digit", "digit.png"))
    bug = form(("image", b"a bug", "digit.png"))
    with caplog.at_level(logging.WARNING, logger="convlens.serving"):
        (_, quiet), (_, loud) = run(scope(), [refused]), run(scope(), [bug])
    assert quiet.bodies == [refused] and loud.bodies == [bug]
    [record] = caplog.records
    assert "shortcut failed" in record.getMessage() and "has a bug" in record.exc_text


def test_a_body_cut_short_reaches_bentoml_with_its_disconnect():
    body = form(("image", PNG_BYTES, "digit.png"))
    sent, inner = run(scope(), [body[:40]], disconnect=True)
    assert inner.bodies == [body[:40]]
    assert inner.messages[-1] == {"type": "http.disconnect"}


def test_the_service_shortcuts_its_predict_api_innermost():
    """Route and field are the predict API's own, and the shortcut is the last middleware
    added, so the body limit, readiness and error shape (`JSONErrors`) stay outside it."""
    from serving.service import ConvLens

    middleware, options = ConvLens.middlewares[-1]
    assert middleware is PredictShortcut
    api = ConvLens.apis["predict"]
    assert options["route"] == api.route
    assert list(api.input_spec.model_fields) == [options["field"]]


def test_the_shortcut_reads_the_count_the_door_keeps():
    from serving.service import ConvLens

    _, options = ConvLens.middlewares[-1]
    assert options["held"] is ConvLens.to_asgi().held


# ------------------------------------------------------------------ over HTTP


@pytest.fixture(scope="module")
def seven_png(mnist_root: Path) -> bytes:
    return digit_png(0, mnist_root)  # MNIST test image 0 is a 7


def test_both_paths_answer_the_same_bytes(served: str, seven_png: bytes):
    """An extra text field, which BentoML ignores, sends the upload down BentoML's path."""
    with httpx.Client(base_url=served, timeout=60) as http:
        shortcut = http.post("/predict", files={"image": ("d.png", seven_png, "image/png")})
        bentoml_path = http.post(
            "/predict",
            files={"image": ("d.png", seven_png, "image/png")},
            data={"note": "sent down BentoML's path"},
        )
    assert shortcut.status_code == bentoml_path.status_code == 200
    assert shortcut.content == bentoml_path.content
    assert json.loads(shortcut.content)["label"] == 7
    for header in ("content-type", "server"):
        assert shortcut.headers[header] == bentoml_path.headers[header]


def test_bentomls_python_client_predicts_as_the_readme_shows(
    served: str, seven_png: bytes, tmp_path: Path
):
    image = tmp_path / "digit.png"
    image.write_bytes(seven_png)
    with bentoml.SyncHTTPClient(served) as client:
        result = client.predict(image=image)
    assert result["label"] == 7
    assert max(result["probabilities"]) == pytest.approx(result["probabilities"][7])
