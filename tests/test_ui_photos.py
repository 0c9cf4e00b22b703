"""A phone photo uploaded on the web page: "what the model saw" is `to_mnist` of the photo, so
a user can see why a photo was misread (the wrong marks kept, the digit cut)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from convlens.preprocessing import to_mnist
from tests.harness import mnist_test_set
from tests.photos import photo_jpeg
from tests.ui_fixtures import needs_chromium
from tests.ui_screenshot import settled, wait_for_results

pytest_plugins = ["tests.serving_fixtures", "tests.ui_fixtures"]

# Photo of MNIST test digit 1234 (seed 3): tilted, under a strong linear shadow.
INDEX, SEED = 1234, 3

pytestmark = needs_chromium

SHOWN_PIXELS = """async () => {
  const img = document.querySelector('#preprocessed');
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  return Array.from(bytes);
}"""


def test_what_the_model_saw_is_to_mnist_of_the_uploaded_photo(page, mnist_root, tmp_path):
    images, _ = mnist_test_set(mnist_root)
    photo = photo_jpeg(images[INDEX], SEED)
    before = settled(page)
    page.set_input_files(
        "#upload", files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    assert wait_for_results(page, before) == "done", page.locator("#status").inner_text()
    page.wait_for_function("() => document.querySelector('#preprocessed').naturalWidth > 0")
    shown = np.asarray(Image.open(io.BytesIO(bytes(page.evaluate(SHOWN_PIXELS)))).convert("L"))
    np.testing.assert_array_equal(shown, to_mnist(Image.open(io.BytesIO(photo))))
    page.screenshot(path=str(tmp_path / "photo-upload.png"))
