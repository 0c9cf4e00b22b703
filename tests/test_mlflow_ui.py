"""The MLflow UI's page of the session's training run, in a real browser (`mlflow ui`).

MLflow 3.12+ lists the run's params above every image of an Image Grid card (mlflow/mlflow
issue 23512): with the whole flattened config as params, that header filled each card and
pushed the filters and feature maps out of sight. Each image card must show its image.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.ui import LOCAL_UI_ENV
from tests.harness import HOST, ServerProcess, free_port

# `browser`: one Chromium for the module, or a skip saying how to install one.
pytest_plugins = ["tests.ui_fixtures"]

IMAGE_FILE = re.compile(r"^(?P<key>.+)\+step\+\d+\+timestamp\+.*(?<!compressed)\.png$")
CARD = '[data-testid="experiment-view-compare-runs-card"]'
VIEWPORT = {"width": 1400, "height": 1000}
TIMEOUT_MS = 180_000  # the UI's first load is slow on a busy 2-core machine

# Where the image of a card lies against the card and against every box between the two that
# clips its content: the image is visible only inside all of them.
GEOMETRY = """card => {
  const img = card.querySelector('img');
  const box = e => { const r = e.getBoundingClientRect();
                     return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  const clips = [];
  for (let e = img.parentElement; e && e !== card; e = e.parentElement) {
    const style = getComputedStyle(e);
    if (style.overflowX !== 'visible' || style.overflowY !== 'visible') clips.push(box(e));
  }
  clips.push(box(card));
  return {image: box(img), clips, loaded: img.complete && img.naturalWidth > 0};
}"""

SCROLLER = """card => {
  for (let e = card.parentElement; e; e = e.parentElement) {
    const style = getComputedStyle(e);
    if (/(auto|scroll)/.test(style.overflowY) && e.scrollHeight > e.clientHeight + 1) return e;
  }
  return document.scrollingElement;
}"""


@pytest.fixture(scope="module")
def mlflow_ui(trained, tmp_path_factory):
    """`mlflow ui` on the trained store, on a free port; its base URL."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [mlflow, "ui", "--backend-store-uri", trained.tracking_uri]
    command += ["--host", HOST, "--port", str(port)]
    env = {**os.environ, **LOCAL_UI_ENV}  # as `make ui` starts it
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    with ServerProcess(
        command,
        log=log,
        ready_url=f"http://{HOST}:{port}/health",
        env=env,
        cwd=trained.workdir,
        timeout_s=300,
        name="mlflow ui",
    ):
        yield f"http://{HOST}:{port}"


def image_keys(client: MlflowClient, run_id: str) -> set[str]:
    """The keys the run logged images under (filters/conv1, feature_maps/conv2/digit_7...)."""
    names = (Path(item.path).name for item in client.list_artifacts(run_id, "images"))
    return {m["key"].replace("~", "/") for m in map(IMAGE_FILE.match, names) if m}


def shown_fraction(geometry: dict) -> float:
    """How much of the card's image lies inside every box that clips it (0 to 1)."""
    image = geometry["image"]
    left, top, right, bottom = (image[side] for side in ("left", "top", "right", "bottom"))
    for clip in geometry["clips"]:
        left, top = max(left, clip["left"]), max(top, clip["top"])
        right, bottom = min(right, clip["right"]), min(bottom, clip["bottom"])
    area = (image["right"] - image["left"]) * (image["bottom"] - image["top"])
    return max(0.0, right - left) * max(0.0, bottom - top) / area if area else 0.0


def measure_card(page, key: str) -> dict:
    """Scroll the card of `key` into view, wait for its image, return its geometry."""
    card = page.locator(CARD).filter(has=page.locator(f'h4[title="{key}"]')).first
    card.scroll_into_view_if_needed()
    try:
        image = card.locator("img").first.element_handle(timeout=60_000)
        page.wait_for_function("img => img.complete", arg=image, timeout=60_000)
    except Exception as error:  # Playwright's TimeoutError, or the card re-rendered
        return {"error": f"no loaded image in the card ({type(error).__name__})"}
    return card.evaluate(GEOMETRY)


@dataclass(frozen=True)
class ImageCards:
    keys: set[str]  # every image key the run logged
    geometry: dict[str, dict]  # per key whose card was found: where its image lies
    screenshot: Path


@pytest.fixture(scope="module")
def image_cards(trained, mlflow_ui, browser, tmp_path_factory) -> ImageCards:
    """Open the run's page, tab "Model metrics", and measure every image card on it."""
    client = MlflowClient(trained.tracking_uri)
    run = client.get_run(trained.run_id)
    keys = image_keys(client, trained.run_id)
    # filters and 10 digits' feature maps, 2 conv layers; the embedding's PCA (EmbeddingPCA)
    assert len(keys) == 23 and "embedding/pca" in keys, sorted(keys)
    screenshot = tmp_path_factory.mktemp("mlflow-ui-screenshot") / "model-metrics.png"
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto(f"{mlflow_ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        page.get_by_role("tab", name="Model metrics").click()
        page.locator(CARD).first.wait_for()
        measure_card(page, sorted(keys)[0])  # the first section, its images loaded
        page.locator(CARD).first.evaluate("card => card.scrollIntoView()")
        page.screenshot(path=screenshot)
        scroller = page.locator(CARD).first.evaluate_handle(SCROLLER)
        # Cards are rendered only near the viewport: walk down the page, measuring each image
        # card the first time it is there, until every one is measured or the page ends.
        geometry: dict[str, dict] = {}
        stalls = 0
        while stalls < 5 and set(geometry) < keys:
            titles = page.locator(f"{CARD} h4").evaluate_all("hs => hs.map(h => h.title)")
            for key in [t for t in titles if t in keys and t not in geometry]:
                geometry[key] = measure_card(page, key)
            moved = scroller.evaluate(
                "e => { const at = e.scrollTop; e.scrollTop += e.clientHeight * 0.7;"
                " return e.scrollTop !== at; }"
            )
            stalls = 0 if moved else stalls + 1
            page.wait_for_timeout(500 if moved else 2000)  # let the next cards render
    finally:
        context.close()
    print(f"screenshot of the run page's Model metrics tab: {screenshot}")
    return ImageCards(keys, geometry, screenshot)


def test_every_image_card_shows_its_whole_image(image_cards):
    """MLflow lists the run's params above each image, in a card of fixed height: with the
    whole config as params (~107, some long JSON) that header was ~1,100 px tall and no image
    was in view at all. Short params (`run_params`) and grids four times as wide as tall
    (`MLflowVisuals(wide=True)`) leave every image wholly inside its card."""
    missing = sorted(image_cards.keys - set(image_cards.geometry))
    assert not missing, f"image cards never shown ({image_cards.screenshot}): {missing}"
    broken = {k: g for k, g in image_cards.geometry.items() if "error" in g or not g["loaded"]}
    assert not broken, f"images not loaded ({image_cards.screenshot}): {broken}"
    cut = {
        key: round(shown_fraction(g), 2)
        for key, g in sorted(image_cards.geometry.items())
        if shown_fraction(g) < 1.0 - 1e-3
    }
    assert not cut, f"{len(cut)} image cards cut ({image_cards.screenshot}): {cut}"
