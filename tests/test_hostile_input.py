"""Hostile input against the real service (`bentoml serve` on the packaged model).

What a careless or malicious client can send: bodies far over the limit (with and without
Content-Length), decompression bombs, formats the service does not decode, arrays that are
not digits, and URLs in the hope that the server fetches them. Every answer must be a 4xx
with the one error shape, quickly, without the workers' memory growing, and the service must
stay ready.
"""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO
from tests.harness import digit_png
from tests.serving_fixtures import Server, worker_rss

pytest_plugins = ["tests.serving_fixtures"]

LIMITS = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())["limits"]
BODY_LIMIT = LIMITS["max_request_bytes"]
HUNDRED_MB = 100 * 2**20
# "Flat": what the workers may grow by over a series of hostile requests. Buffering one of
# the 100 MB bodies, or decoding one bomb, would take hundreds of MB.
FLAT_BYTES = 48 * 2**20


@pytest.fixture(scope="module")
def http(served: str):
    with httpx.Client(base_url=served, timeout=60) as client:
        yield client


def assert_error(response: httpx.Response, statuses: int | set[int], fragment: str = "") -> None:
    """The one documented error shape: {"error": "<message>"} as JSON, nothing else."""
    allowed = {statuses} if isinstance(statuses, int) else statuses
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment.lower() in body["error"].lower(), body["error"]


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def upload(data: bytes, name: str = "digit.png") -> dict:
    return {"files": {"image": (name, data, "application/octet-stream")}}


def assert_still_serving(http: httpx.Client) -> None:
    assert http.get("/readyz").status_code == 200
    response = http.post("/predict", **upload(digit_png()))
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ 1. the body limit


@dataclass
class RawUpload:
    """A 100 MB upload over a raw socket, answered while it is still being sent."""

    status: int = 0
    body: bytes = b""
    seconds: float = 0.0  # from the first byte sent to the whole answer read
    sent_at_answer: int = 0  # body bytes sent when the answer had arrived
    sent: int = 0
    readyz_during: int = 0  # /readyz's status while the upload was paused mid-body
    answered: threading.Event = field(default_factory=threading.Event)


def raw_upload(
    server_url: str, route: str, content_type: str, prefix: bytes, chunked: bool
) -> RawUpload:
    """POST a 100 MB body to `route`, `prefix` then zeros: with Content-Length, or chunked (no
    length, so only counting can stop it). Sends at full speed up to twice the limit, then
    waits for the answer (a server that reads the whole body first never gives one), then
    sends the rest, which the server must drop without buffering it."""
    host, port = urlsplit(server_url).hostname, urlsplit(server_url).port
    result = RawUpload()
    head = f"POST {route} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
    head += (
        "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {HUNDRED_MB}\r\n\r\n"
    )
    sock = socket.create_connection((host, port), timeout=30)
    chunk = bytes(2**16)

    def frame_of(size: int) -> bytes:
        return (b"%x\r\n" % size + bytes(size) + b"\r\n") if chunked else bytes(size)

    frame = frame_of(len(chunk))

    def pump() -> None:
        try:
            first = (b"%x\r\n" % len(prefix) + prefix + b"\r\n") if chunked else prefix
            sock.sendall(first)
            result.sent = len(prefix)
            while result.sent < HUNDRED_MB:
                if result.sent >= 2 * BODY_LIMIT and not result.answered.is_set():
                    if result.readyz_during == 0:
                        result.readyz_during = httpx.get(f"{server_url}/readyz").status_code
                    if not result.answered.wait(10):
                        return
                size = min(len(chunk), HUNDRED_MB - result.sent)
                sock.sendall(frame if size == len(chunk) else frame_of(size))
                result.sent += size
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server may close once it has answered; that is fine
            pass

    start = time.monotonic()
    sock.sendall(head.encode())
    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            received = sock.recv(65536)
            assert received, f"connection closed without an answer after {result.sent:,} bytes"
            data += received
        header, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in header.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += sock.recv(65536)
        result.seconds = time.monotonic() - start
        result.sent_at_answer = result.sent
        result.status = int(header.split(b" ")[1])
        result.body = body
        result.answered.set()
        sender.join(timeout=60)
        assert not sender.is_alive(), "the server stopped taking the rest of the body"
    finally:
        sock.close()
    return result


MULTIPART = "multipart/form-data; boundary=b"
FILE_PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
JSON_START = b'{"images": [[['
HUGE_UPLOADS = {
    "predict_multipart_with_length": ("/predict", MULTIPART, FILE_PART, False),
    "predict_multipart_chunked": ("/predict", MULTIPART, FILE_PART, True),
    "predict_batch_json_with_length": ("/predict_batch", "application/json", JSON_START, False),
    "predict_batch_json_chunked": ("/predict_batch", "application/json", JSON_START, True),
}


def test_100mb_uploads_get_413_at_once_and_are_never_buffered(http, served_server: Server):
    before = worker_rss(served_server)
    results = {}
    for case, (route, content_type, prefix, chunked) in HUGE_UPLOADS.items():
        result = raw_upload(served_server.url, route, content_type, prefix, chunked)
        results[case] = result
        assert result.status == 413, (case, result.status, result.body[:300])
        body = json.loads(result.body)
        assert set(body) == {"error"} and "limit" in body["error"], body
        # Answered within a second, long before the body was complete: the limit is enforced
        # on what has arrived, not after reading everything.
        assert result.seconds < 1.0, (case, result.seconds)
        assert result.sent_at_answer <= 2 * BODY_LIMIT + 2**17, (case, result.sent_at_answer)
        assert result.sent == HUNDRED_MB, (case, result.sent)  # the rest was taken and dropped
        assert result.readyz_during in (0, 200), (case, result.readyz_during)
    grown = worker_rss(served_server) - before
    assert grown < FLAT_BYTES, f"workers grew by {grown / 2**20:.0f} MiB over 400 MB of uploads"
    assert_still_serving(http)


def test_body_limit_comes_from_the_config_and_the_image_limit_sits_under_it(http):
    assert 2 * 2**20 <= BODY_LIMIT <= 16 * 2**20  # "a few MB"
    assert LIMITS["max_image_bytes"] < BODY_LIMIT
    just_over = BODY_LIMIT + 1 - len(b"--b\r\n--b--\r\n")
    assert_error(http.post("/predict", **upload(bytes(just_over))), 413, "request body")
    image = b"\x89PNG\r\n\x1a\n" + bytes(LIMITS["max_image_bytes"] + 1)
    assert len(image) < BODY_LIMIT - 1000
    assert_error(http.post("/predict", **upload(image)), 413, "the image is")
    assert http.post("/model_info").json()["input"]["max_request_bytes"] == BODY_LIMIT


# ------------------------------------------------------------------ 2. images


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, depth: int = 8, pixels: bytes | None = None) -> bytes:
    """A PNG whose header declares `width` x `height` gray pixels; its data is a token
    amount unless `pixels` gives the whole compressed image."""
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    data = pixels if pixels is not None else zlib.compress(bytes(2**16))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def complete_png_bomb(side: int = 16384) -> bytes:
    """A valid, complete 1-bit PNG of side x side pixels (268 Mpx for 16384): ~32 KB that
    decode to 32 MB, and to a GB once converted to float for the model."""
    row = bytes(1 + side // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_declaring(side, side, depth=1, pixels=data)


def gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b",\0\0\0\0\x01\0\x01\0\0\x02\x02D\x01\0"
    return b"GIF89a" + screen + frame + b";"


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 12, 0, 0, 54) + info + bytes(12)


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (8, 8)), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_declaring(side: int) -> bytes:
    """A lossless WebP whose VP8L header says side x side (at most 16384)."""
    data = bytearray(encode(Image.new("L", (8, 8)), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 9  # past the chunk header and the 0x2f signature
    rest = int.from_bytes(data[at : at + 4], "little") & ~((1 << 28) - 1)
    size_bits = (side - 1) | ((side - 1) << 14)
    data[at : at + 4] = (rest | size_bits).to_bytes(4, "little")
    return bytes(data)


BOMBS: dict[str, Callable[[], bytes]] = {
    "png_header_400_mpx": lambda: png_declaring(20000, 20000),
    "png_complete_268_mpx": complete_png_bomb,
    "png_just_over_the_limit": lambda: png_declaring(4097, 4096),
    "png_64_mpx_under_pillows_limit": lambda: png_declaring(8192, 8192),
    "gif_4_gpx_screen": lambda: gif_declaring(65535, 65535),
    "bmp_2_5_gpx": lambda: bmp_declaring(50000, 50000),
    "jpeg_4_gpx": lambda: jpeg_declaring(65000, 65000),
    "webp_268_mpx": lambda: webp_declaring(16384),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_decompression_bomb_is_refused_from_its_header(http, bomb):
    data = BOMBS[bomb]()
    assert len(data) < 64 * 1024, len(data)  # small files...
    response = http.post("/predict", **upload(data))
    assert_error(response, {413, 422}, "pixels")  # ...refused for the pixels they declare


def test_ten_bombs_in_a_row_leave_memory_flat(http, served_server: Server):
    bombs = [make() for make in BOMBS.values()]
    http.post("/predict", **upload(bombs[1]))  # first use of each code path is not growth
    before = worker_rss(served_server)
    for i in range(10):
        assert_error(http.post("/predict", **upload(bombs[i % len(bombs)])), {413, 422})
    grown = worker_rss(served_server) - before
    assert grown < FLAT_BYTES, f"workers grew by {grown / 2**20:.0f} MiB over ten bombs"
    assert_still_serving(http)


def test_marks_too_sparse_for_28x28_are_a_422_not_a_500(http):
    """Two dots in opposite corners: the ink vanishes when scaled to 20 px, leaving nothing
    to centre (`to_mnist` divided by zero and answered 500)."""
    page = np.full((1000, 1000), 255, np.uint8)
    page[0, 0] = page[-1, -1] = 0
    for route in ("/predict", "/preprocessed"):
        response = http.post(route, **upload(encode(Image.fromarray(page))))
        assert_error(response, 422, "no digit")


NOT_IMAGES: dict[str, bytes] = {
    "text": b"hello, world",
    "html": b"<!doctype html><html><body>7</body></html>",
    "json": b'{"image": [0, 255]}',
    "zip": b"PK\x03\x04" + bytes(100),
    "gzip": b"\x1f\x8b\x08\x00" + bytes(100),
    "elf": b"\x7fELF\x02\x01\x01" + bytes(100),
    "random_bytes": random.Random(6).randbytes(4096),
    "png_signature_only": b"\x89PNG\r\n\x1a\n",
}


@pytest.mark.parametrize("name", NOT_IMAGES)
def test_non_image_bytes_are_a_400(http, name):
    for route, extra in (
        ("/predict", {}),
        ("/preprocessed", {}),
        ("/feature_maps", {"layer": "conv1"}),
    ):
        response = http.post(route, **upload(NOT_IMAGES[name]), data=extra)
        assert_error(response, 400)


def tiff() -> bytes:
    return encode(Image.new("L", (28, 28)), "TIFF")


UNSUPPORTED: dict[str, tuple[Callable[[], bytes], str]] = {
    "tiff": (tiff, "TIFF"),
    "tiff_big_endian": (lambda: b"MM\x00*" + tiff()[4:], "TIFF"),
    "pdf": (lambda: b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "PDF"),
    "svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><text>7</text></svg>',
        "SVG",
    ),
    "svg_with_prolog": (
        lambda: (
            b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- a seven -->\n<!DOCTYPE svg>\n'
            b'<SVG xmlns="http://www.w3.org/2000/svg"></SVG>'
        ),
        "SVG",
    ),
    "eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n", "PostScript"),
    "ico": (lambda: encode(Image.new("L", (16, 16)), "ICO"), "ICO"),
    "ppm": (lambda: encode(Image.new("RGB", (28, 28)), "PPM"), "PPM"),
    "psd": (lambda: b"8BPS\x00\x01" + bytes(100), "PSD"),
    "heic": (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIF"),
    "jpeg_2000": (lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64), "JPEG 2000"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_format_is_a_415_that_names_it(http, name):
    make, says = UNSUPPORTED[name]
    # The file name and declared type do not matter: the bytes decide.
    response = http.post("/predict", files={"image": ("digit.png", make(), "image/png")})
    assert_error(response, 415, says)
    assert "not supported" in response.json()["error"]


# ------------------------------------------------------------------ 3. arrays


def rows(value: object = 0) -> list:
    return [[value] * 28 for _ in range(28)]


def raw(text: str | bytes, content_type: str = "application/json") -> dict:
    body = text.encode() if isinstance(text, str) else text
    return {"content": body, "headers": {"content-type": content_type}}


BAD_ARRAYS: dict[str, dict] = {
    "empty_object": {"json": {}},
    "no_body": raw(b""),
    "null": raw("null"),
    "list_not_object": raw("[]"),
    "string_body": raw('"images"'),
    "number_body": raw("7"),
    "images_null": {"json": {"images": None}},
    "images_object": {"json": {"images": {}}},
    "images_string": {"json": {"images": "0" * 784}},
    "images_number": {"json": {"images": 7}},
    "images_bool": {"json": {"images": True}},
    "one_image_without_batch_axis": {"json": {"images": rows()}},
    "scalar_rows": {"json": {"images": [0] * 784}},
    "wrong_height": {"json": {"images": [rows()[:27]]}},
    "wrong_width": {"json": {"images": [[[0] * 29 for _ in range(28)]]}},
    "two_channels": {"json": {"images": [[rows(), rows()]]}},
    "five_dimensions": {"json": {"images": [[[rows()]]]}},
    "ragged": {"json": {"images": [rows(), rows()[:5]]}},
    "booleans": {"json": {"images": [rows(True)]}},
    "strings_of_numbers": {"json": {"images": [rows("1")]}},
    "nulls": {"json": {"images": [rows(None)]}},
    "nested_objects": {"json": {"images": [rows({"v": 1})]}},
    "nan": raw(json.dumps({"images": [rows(0.5)]}).replace("0.5", "NaN", 1)),
    "infinity": raw(json.dumps({"images": [rows(0.5)]}).replace("0.5", "Infinity", 1)),
    "minus_infinity": raw(json.dumps({"images": [rows(0.5)]}).replace("0.5", "-Infinity", 1)),
    "float_overflowing_to_infinity": raw(
        json.dumps({"images": [rows(0.5)]}).replace("0.5", "1e999", 1)
    ),
    "integer_over_255": {"json": {"images": [rows(256)]}},
    "negative_integer": {"json": {"images": [rows(-1)]}},
    "huge_integer": {"json": {"images": [rows(10**40)]}},
    "float_over_1": {"json": {"images": [rows(1.0000001)]}},
    "negative_float": {"json": {"images": [rows(-0.1)]}},
    "float_0_255_scale": {"json": {"images": [rows(255.0)]}},
    "mixed_int_and_big_float": {"json": {"images": [rows(255), rows(0.5)]}},
    "too_many_images": {"json": {"images": np.zeros((1025, 28, 28), np.uint8).tolist()}},
    "deep_nesting": raw('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "invalid_json": raw("{images: [1, 2]"),
    "truncated_json": raw('{"images": [[[0, 0, '),
    "latin1_bytes": raw(b'{"images": "\xff\xfe"}'),
    "unknown_content_type": raw("images=1", "application/x-custom"),
    "xml": raw("<images><image/></images>", "application/xml"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_malformed_arrays_get_the_one_error_shape(http, case):
    assert_error(http.post("/predict_batch", **BAD_ARRAYS[case]), {400, 422})


def assert_predictions(body: object, count: int) -> None:
    """What every 200 of /predict_batch carries: per image a label and ten finite
    probabilities summing to one."""
    assert isinstance(body, list) and len(body) == count
    for row in body:
        probabilities = np.asarray(row["probabilities"], dtype=np.float64)
        assert probabilities.shape == (10,)
        assert np.isfinite(probabilities).all() and (probabilities >= 0).all()
        assert abs(probabilities.sum() - 1) <= 1e-5, probabilities.sum()
        assert row["label"] == int(probabilities.argmax())


GOOD_ARRAYS: dict[str, np.ndarray] = {
    "uint8_nhw": np.random.default_rng(0).integers(0, 256, (3, 28, 28)),
    "float_nchw": np.random.default_rng(1).random((2, 1, 28, 28)),
    "all_zeros": np.zeros((1, 28, 28), np.uint8),
    "all_255": np.full((1, 28, 28), 255),
    "all_ones_float": np.ones((1, 1, 28, 28)),
    "the_batch_limit": np.zeros((1024, 28, 28), np.uint8),
}


@pytest.mark.parametrize("case", GOOD_ARRAYS)
def test_every_200_carries_ten_finite_probabilities_summing_to_one(http, case):
    images = GOOD_ARRAYS[case]
    response = http.post("/predict_batch", json={"images": images.tolist()})
    assert response.status_code == 200, response.text[:500]
    assert_predictions(response.json(), len(images))


# ------------------------------------------------------------------ 4. no fetching of URLs


class Listener:
    """A local TCP listener that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def url_requests(url: str) -> dict[str, tuple[str, dict]]:
    form = "application/x-www-form-urlencoded"
    return {
        "image_as_text_field": (
            "/predict",
            {"data": {"image": url}},
        ),
        "image_as_quoted_text_field": ("/predict", {"data": {"image": f'"{url}"'}}),
        "image_as_file_holding_the_url": ("/predict", upload(url.encode(), "x.url")),
        "image_in_a_json_body": ("/predict", {"json": {"image": url}}),
        "json_string_body": ("/predict", raw(json.dumps(url))),
        "bare_url_body": ("/predict", raw(url, "text/plain")),
        "urlencoded_form": ("/predict", raw(f"image={url}", form)),
        "preprocessed": ("/preprocessed", {"data": {"image": url}}),
        "feature_maps": ("/feature_maps", {"data": {"image": url, "layer": "conv1"}}),
        "building_blocks": ("/building_blocks", {"data": {"image": url, "kernel": "blur"}}),
        "layer_as_url": ("/filters", {"json": {"layer": url}}),
        "images_as_url": ("/predict_batch", {"json": {"images": url}}),
        "images_list_of_urls": ("/predict_batch", {"json": {"images": [url]}}),
    }


def test_urls_given_as_input_are_never_fetched(http, listener):
    url = f"http://127.0.0.1:{listener.port}/x.png"
    with socket.create_connection(("127.0.0.1", listener.port)):
        pass  # the listener does count connections...
    deadline = time.monotonic() + 5
    while listener.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.connections == 1
    listener.connections = 0
    for case, (route, request) in url_requests(url).items():
        response = http.post(route, **request)
        assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
        assert_error(response, response.status_code)
        if "data" in request or "urlencoded" in case:  # refused before BentoML would fetch it
            assert "uploaded as a file" in response.json()["error"], (case, response.text)
    time.sleep(0.5)  # a fetch in the background would have connected by now
    assert listener.connections == 0, "the service connected to a URL taken from a request"
