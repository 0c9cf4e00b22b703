"""The web page at /ui, driven in a real browser against the real served model."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.harness import mnist_test_set
from tests.ui_fixtures import needs_chromium
from tests.ui_screenshot import (
    SAMPLES_DIR,
    SEVEN,
    UI_DIR,
    digit_png,
    draw_stroke,
    open_page,
    settled,
    take_screenshot,
    wait_for_results,
)

# `served_url`: the session's `bentoml serve` of the model the `trained` fixture registered;
# `browser` and `page`: Chromium, and a fresh page on that model for each test.
pytest_plugins = ["tests.serving_fixtures", "tests.ui_fixtures"]

UPLOAD_INDEX = 1234  # an MNIST test image that is not one of the page's samples
SLOW_NETWORK_MS = 600  # latency added to each request where evaluations must overlap


# ------------------------------------------------------------------ static files, no browser


def test_samples_are_the_first_mnist_test_image_of_each_digit(mnist_root):
    images, labels = mnist_test_set(mnist_root)
    manifest = json.loads((SAMPLES_DIR / "index.json").read_text())
    samples = manifest["samples"]
    assert [s["label"] for s in samples] == list(range(10))
    for sample in samples:
        path = SAMPLES_DIR / sample["file"]
        assert path.stat().st_size < 4096
        pixels = np.asarray(Image.open(path))
        np.testing.assert_array_equal(pixels, images[sample["index"]])
        assert labels[sample["index"]] == sample["label"]
        assert sample["index"] == int(np.flatnonzero(labels == sample["label"])[0])


def js_modules() -> list[str]:
    return sorted(path.name for path in UI_DIR.glob("*.js"))


def test_page_uses_no_outside_resources():
    """Works offline: no CDN, no web fonts; the only absolute URL is the optional MLflow UI."""
    for name in ("index.html", "style.css", *js_modules()):
        text = (UI_DIR / name).read_text()
        for url in re.findall(r"https?://[^\s\"'`)]+", text):
            assert url.startswith("http://127.0.0.1:5000"), f"{name} loads {url}"
        assert "@import" not in text and '<script src="http' not in text


IMPORT = re.compile(r"^\s*(?:import|export)\b[^;]*?\bfrom\s+[\"']([^\"']+)[\"']", re.M | re.S)


def test_page_is_small_es_modules_without_a_build_step():
    """index.html loads one entry module; every module is imported by a relative path, reached
    from the entry, at most 300 lines, and opens with a comment saying what it holds."""
    page = (UI_DIR / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="app.js">']
    modules = js_modules()
    reached, todo = set(), ["app.js"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        text = (UI_DIR / name).read_text()
        assert text.startswith("// "), f"{name} has no header comment"
        assert len(text.splitlines()) <= 300, f"{name} is {len(text.splitlines())} lines"
        assert "import(" not in text, f"{name} imports dynamically"
        for spec in IMPORT.findall(text):
            assert re.fullmatch(r"\./[a-z-]+\.js", spec), f"{name} imports {spec!r}"
            assert spec[2:] in modules, f"{name} imports {spec}, which does not exist"
            todo.append(spec[2:])
    assert reached == set(modules), f"modules no page loads: {set(modules) - reached}"


def test_page_reads_kernels_and_run_link_from_model_info():
    """The kernels and the MLflow UI's address come from /model_info, not from the page."""
    code = "\n".join((UI_DIR / name).read_text() for name in js_modules())
    for kernel in ("horizontal_edge", "vertical_edge", "Horizontal edge", "Sharpen"):
        assert kernel not in code
    for gone in ("MLFLOW_UI", "127.0.0.1:5000", "#/experiments", "#/runs", "field("):
        assert gone not in code


def test_ui_app_serves_the_page_and_its_assets():
    from serving.ui_app import ui_app

    async def fetch_all():
        transport = httpx.ASGITransport(app=ui_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
            paths = ["/", "/app.js", "/style.css", "/samples/index.json", "/nope.js"]
            paths += [f"/{name}" for name in js_modules() if name != "app.js"]
            return {path: await client.get(path) for path in paths}

    responses = asyncio.run(fetch_all())
    page = responses["/"]
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="app.js"' in page.text and 'href="style.css"' in page.text
    assert responses["/app.js"].headers["content-type"].split(";")[0] in (
        "text/javascript",
        "application/javascript",
    )
    for name in js_modules():  # a module served as anything else is refused by the browser
        assert responses[f"/{name}"].status_code == 200
        assert responses[f"/{name}"].headers["content-type"].split(";")[0] in (
            "text/javascript",
            "application/javascript",
        ), name
    assert responses["/style.css"].headers["content-type"].startswith("text/css")
    assert responses["/samples/index.json"].json()["samples"]
    assert responses["/nope.js"].status_code == 404


# ------------------------------------------------------------------ against the served model


def test_service_mounts_the_page(served_url):
    with httpx.Client(base_url=served_url, timeout=30) as client:
        redirect = client.get("/ui")
        assert redirect.status_code in (301, 302, 307, 308)
        assert redirect.headers["location"].endswith("/ui/")
        page = client.get("/ui/")
        assert page.status_code == 200 and "<canvas" in page.text
        assert client.get("/ui/app.js").status_code == 200


def model_info(base_url: str) -> dict:
    response = httpx.post(f"{base_url}/model_info", json={}, timeout=30)
    response.raise_for_status()
    return response.json()


def spatial_layers(info: dict) -> list[str]:
    return [
        layer["name"]
        for layer in info["layers"]
        if re.search("conv|pool", f"{layer['type']} {layer['name']}", re.I)
        and len(layer["output_shape"]) == 3
    ]


def loaded(page, selector: str) -> list[int]:
    return page.eval_on_selector_all(
        selector, "imgs => imgs.map(i => (i.complete && i.naturalWidth) || 0)"
    )


@needs_chromium
def test_drawing_a_digit_shows_prediction_and_every_layer(page, served_url):
    before = settled(page)
    draw_stroke(page, SEVEN)
    assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()

    assert re.fullmatch(r"\d", page.locator("#label").inner_text())
    bars = page.locator("#bars .bar")
    assert bars.count() == 10
    probabilities = [float(bars.nth(i).get_attribute("data-p")) for i in range(10)]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    top = int(np.argmax(probabilities))
    assert page.locator("#bars .bar.top").get_attribute("data-digit") == str(top)
    assert page.locator("#label").inner_text() == str(top)

    layers = spatial_layers(model_info(served_url))
    assert layers, "model_info lists no conv or pool layers"
    shown = page.eval_on_selector_all(".map", "maps => maps.map(m => m.dataset.layer)")
    assert shown == layers
    widths = loaded(page, ".map img")
    assert len(widths) == len(layers) and all(w > 0 for w in widths), dict(
        zip(layers, widths, strict=False)
    )
    assert loaded(page, "#preprocessed")[0] > 0
    steps = loaded(page, ".block-row img")
    assert len(steps) == 16 and all(w > 0 for w in steps)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#filters img')].every(i => i.naturalWidth > 0)"
    )
    assert page.locator("#filters img").count() == sum(1 for n in layers if "conv" in n)


@needs_chromium
def test_uploaded_mnist_digit_gets_the_same_label_as_predict(
    page, served_url, mnist_root, tmp_path
):
    images, _ = mnist_test_set(mnist_root)
    path = tmp_path / f"mnist-test-{UPLOAD_INDEX}.png"
    path.write_bytes(digit_png(images[UPLOAD_INDEX]))
    response = httpx.post(
        f"{served_url}/predict",
        files={"image": (path.name, path.read_bytes(), "image/png")},
        timeout=60,
    )
    response.raise_for_status()
    expected = response.json()["label"]

    before = settled(page)
    page.set_input_files("#upload", str(path))
    assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
    assert page.locator("#label").inner_text() == str(expected)


@needs_chromium
def test_service_errors_are_shown_to_the_user(page):
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, "PNG")
    before = settled(page)
    page.set_input_files(
        "#upload",
        files=[{"name": "blank.png", "mimeType": "image/png", "buffer": blank.getvalue()}],
    )
    assert wait_for_results(page, before) == "error"
    status = page.locator("#status")
    assert status.get_attribute("data-kind") == "error"
    message = status.inner_text()
    assert len(message) > 10 and "{" not in message and "[object" not in message
    assert page.locator("#bars .bar").count() == 0


@needs_chromium
def test_sample_clear_undo_and_keyboard_zoom(page):
    before = settled(page)
    page.get_by_role("button", name=re.compile(r"a 3$")).click()
    assert wait_for_results(page, before) == "done"
    label = page.locator("#label").inner_text()

    before = settled(page)
    page.get_by_role("button", name="Clear").click()
    assert wait_for_results(page, before) == "empty"
    assert page.locator("#bars .bar").count() == 0

    before = settled(page)
    page.keyboard.press("Control+z")
    assert wait_for_results(page, before) == "done"
    assert page.locator("#label").inner_text() == label

    grid = page.locator(".map .grid-wrap").first
    grid.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    page.wait_for_function(
        "() => /channel 10 of/.test(document.getElementById('zoom-info').textContent) &&"
        " /values/.test(document.getElementById('zoom-info').textContent)"
    )
    assert page.locator(".map .mark").first.is_visible()


@needs_chromium
def test_page_fits_a_phone(browser, served_url):
    context = browser.new_context(
        viewport={"width": 375, "height": 740}, has_touch=True, is_mobile=True
    )
    try:
        page = context.new_page()
        open_page(page, served_url)
        before = settled(page)
        page.locator("#samples button").first.tap()
        assert wait_for_results(page, before) == "done"
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    finally:
        context.close()


@needs_chromium
def test_page_loads_every_module_without_console_errors_as_evaluations_overlap(browser, served_url):
    """On a slow network a stroke drawn with pauses is evaluated at each pause, and each
    evaluation aborts the one before it: the console stays clean, and every aborted request
    is asked again and answered."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    scripts: dict[str, tuple[int, str]] = {}
    sent: list = []  # the page's requests, in the order it sent them
    answered: set[int] = set()  # indices into `sent` answered without an error
    superseded: list[int] = []  # indices into `sent` the page aborted itself

    def on_console(message):
        # The MLflow UI probe may fail by design: no run_url server answers in the test suite.
        if message.type == "error" and not message.location.get("url", "").endswith("/health"):
            problems.append(f"console: {message.text} ({message.location.get('url')})")

    def on_response(response):
        if response.url.endswith(".js"):
            scripts[response.url.rsplit("/", 1)[-1]] = (
                response.status,
                response.headers.get("content-type", ""),
            )
        if response.status >= 400:
            problems.append(f"HTTP {response.status}: {response.url}")
        elif response.request in sent:
            answered.add(sent.index(response.request))

    def on_failed(request):
        if request.failure == "net::ERR_ABORTED" and request in sent:
            superseded.append(sent.index(request))
        elif not request.url.endswith("/health"):
            problems.append(f"failed: {request.url} ({request.failure})")

    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
        page.on("request", lambda request: sent.append(request))
        page.on("response", on_response)
        page.on("requestfailed", on_failed)
        open_page(page, served_url)
        slow = {"offline": False, "latency": SLOW_NETWORK_MS, "downloadThroughput": -1}
        context.new_cdp_session(page).send(
            "Network.emulateNetworkConditions", {**slow, "uploadThroughput": -1}
        )
        before = settled(page)
        draw_stroke(page, SEVEN, pause_ms=SLOW_NETWORK_MS / 2)
        assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#filters img')].every(i => i.naturalWidth > 0)"
        )
    finally:
        context.close()
    assert not problems, problems
    assert superseded, "no evaluation overlapped another: the test did not test aborts"
    for i in superseded:
        later = [j for j in answered if j > i and sent[j].url == sent[i].url]
        assert later, f"the page aborted {sent[i].url} and never asked it again"
    assert sorted(scripts) == js_modules()
    for name, (status, content_type) in scripts.items():
        assert status == 200 and "javascript" in content_type, (name, status, content_type)


def kernel_title(name: str) -> str:
    words = name.replace("_", " ")
    return words[:1].upper() + words[1:]


def block_rows(page) -> list[tuple[str, str]]:
    return page.eval_on_selector_all(
        ".block-row",
        "rows => rows.map(r => [r.dataset.kernel, r.querySelector('h3').textContent])",
    )


@needs_chromium
def test_building_blocks_are_the_kernels_model_info_lists(page, served_url):
    kernels = model_info(served_url)["kernels"]
    assert kernels, "model_info lists no kernels"
    assert block_rows(page) == [[k, kernel_title(k)] for k in kernels]
    assert kernel_title("horizontal_edge") == "Horizontal edge"
    if "horizontal_edge" in kernels:
        assert page.locator(".block-row h3").first.inner_text() == "Horizontal edge"


REMOVED = object()  # open_with_model_info(..., key=REMOVED): /model_info without that key


def open_with_model_info(browser, served_url: str, health_at: str | None = None, **changes):
    """A page whose /model_info answer is the service's own with `changes` applied, as a
    service returning them would answer, and `health_at`/health answering as an MLflow UI
    does. Returns (context, page, JavaScript errors)."""

    def patch(route):
        response = route.fetch()
        info = response.json()
        for key, value in changes.items():
            if value is REMOVED:
                info.pop(key, None)
            else:
                info[key] = value
        route.fulfill(response=response, json=info)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route(f"{served_url}/model_info", patch)
    if health_at:
        context.route(f"{health_at}/health", lambda route: route.fulfill(status=200, body="OK"))
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_page(page, served_url)
    return context, page, errors


@needs_chromium
def test_building_blocks_follow_model_info(browser, served_url):
    context, page, errors = open_with_model_info(browser, served_url, kernels=["sharpen", "blur"])
    try:
        assert block_rows(page) == [["sharpen", "Sharpen"], ["blur", "Blur"]]
        before = settled(page)
        draw_stroke(page, SEVEN)
        assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
        steps = loaded(page, ".block-row img")
        assert len(steps) == 8 and all(w > 0 for w in steps)
    finally:
        context.close()
    assert not errors


@pytest.fixture
def mlflow_ui():
    """A stand-in MLflow UI on a free local port: answers /health, records what was asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_chromium
def test_model_card_links_the_run_to_run_url(browser, served_url, mlflow_ui):
    base, asked = mlflow_ui
    info = model_info(served_url)
    run_id = info["run_id"]
    assert run_id, "the test model has no MLflow run"
    run_url = f"{base}/#/experiments/7/runs/{run_id}"
    context, page, errors = open_with_model_info(browser, served_url, run_url=run_url)
    try:
        link = page.locator("#model-card a", has_text=run_id)
        link.wait_for()
        assert link.get_attribute("href") == run_url
        assert link.locator("code").inner_text() == run_id
        assert "/health" in asked
        assert page.locator("#model-card .note").count() == 0
    finally:
        context.close()
    assert not errors


@needs_chromium
def test_model_card_links_the_run_to_the_services_run_url(browser, served_url):
    """The service's own run_url, its MLflow UI standing in as answering /health."""
    info = model_info(served_url)
    if not info.get("run_url"):
        pytest.skip("the served model has no run_url")
    run_url = info["run_url"]
    origin = re.match(r"https?://[^/#?]+", run_url).group(0)
    context, page, errors = open_with_model_info(browser, served_url, health_at=origin)
    try:
        link = page.locator("#model-card a", has_text=info["run_id"])
        link.wait_for()
        assert link.get_attribute("href") == run_url
    finally:
        context.close()
    assert not errors


@needs_chromium
@pytest.mark.parametrize("case", ["missing", "null", "unreachable", "not-http"])
def test_model_card_shows_the_run_id_as_text_without_a_reachable_run_url(browser, served_url, case):
    run_id = model_info(served_url)["run_id"]
    assert run_id, "the test model has no MLflow run"
    run_url = {
        "missing": REMOVED,  # the service before it returned run_url
        "null": None,  # no MLflow UI known for the run
        "unreachable": f"http://127.0.0.1:{free_port()}/#/runs/{run_id}",
        "not-http": "javascript:alert(1)",
    }[case]
    context, page, errors = open_with_model_info(browser, served_url, run_url=run_url)
    try:
        if case == "unreachable":
            note = page.locator("#model-card .note")
            note.wait_for()
            assert "not reachable" in note.inner_text()
        else:
            assert page.locator("#model-card .note").count() == 0
        assert page.locator("#model-card code", has_text=run_id).inner_text() == run_id
        assert page.locator("#model-card a").count() == 0
    finally:
        context.close()
    assert not errors


@needs_chromium
@pytest.mark.skipif(
    not os.environ.get("CONVLENS_SCREENSHOT"),
    reason="set CONVLENS_SCREENSHOT=docs/ui.png to refresh the README's screenshot",
)
def test_readme_screenshot(browser, served_url):
    out = Path(os.environ["CONVLENS_SCREENSHOT"])
    path = take_screenshot(served_url, out, browser=browser)
    assert 0 < path.stat().st_size < 500_000
