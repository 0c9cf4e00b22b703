"""Photos of handwritten digits: accuracy on phone-photo-like images against clean PNGs.

    uv run --frozen python -m benchmarks.photos [--count 500] [--model FOLDER]
        [--tracking-uri URI] [--results FILE]

The first `--count` MNIST test digits, each sent through `to_mnist` twice: as a clean PNG, and
as a photo made by `tests/photos.py` (paper, uneven light, tilt, blur, noise, dust, ruled
lines, the page's edge, JPEG; photo i drawn with seed 12000 + i). Reports both accuracies and
their ratio (issue 12's goal: >= 0.95), with the model that was measured: the registered
champion of the store (`--tracking-uri`, default the config's), or the safetensors folder
given with `--model` (weights and architecture, as `convlens.weights` writes them).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import data_root, merge_results, parser, print_json
from convlens.model import ConvNet
from convlens.preprocessing import NoDigitError, normalize, to_mnist
from tests.harness import mnist_test_set, png_bytes
from tests.photos import photo_jpeg

SEED = 12_000  # the same photos as tests/test_photos.py
GOAL = 0.95


def champion_net(tracking_uri: str | None) -> tuple[ConvNet, str]:
    """The registered champion, as MLflow logged it, and a name for it."""
    from convlens.artifact import WEIGHTS_SHA256, load_logged_net
    from convlens.config import Settings, compose
    from convlens.registry import champion
    from convlens.store import open_store

    settings = Settings.of(compose([]))
    client = open_store(tracking_uri or settings.tracking_uri)
    version = champion(client, settings.model_name)
    if version is None:
        raise SystemExit(f"no champion of {settings.model_name!r} in {client.tracking_uri}")
    location = client.get_model_version_download_uri(settings.model_name, version.version)
    net = load_logged_net(client, location, version.tags.get(WEIGHTS_SHA256))
    return net, f"{settings.model_name} v{version.version} (champion)"


def read(data: bytes) -> np.ndarray:
    try:
        return to_mnist(Image.open(io.BytesIO(data)))
    except NoDigitError:
        return np.zeros((28, 28), np.uint8)  # "no digit" counts as a wrong answer


def accuracy(net: ConvNet, seen: list[np.ndarray], labels: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = net(normalize(torch.from_numpy(np.stack(seen)))).argmax(1).numpy()
    return round(float((predicted == labels).mean()), 4)


def measure(net: ConvNet, count: int) -> dict:
    images, labels = mnist_test_set(data_root())
    images, labels = images[:count], labels[:count]
    start = time.perf_counter()
    clean = [read(png_bytes(digit)) for digit in images]
    clean_s = time.perf_counter() - start
    photos = [photo_jpeg(digit, SEED + i) for i, digit in enumerate(images)]
    start = time.perf_counter()
    seen = [read(photo) for photo in photos]
    photo_s = time.perf_counter() - start
    clean_acc, photo_acc = accuracy(net, clean, labels), accuracy(net, seen, labels)
    return {
        "count": count,
        "clean_acc": clean_acc,
        "photo_acc": photo_acc,
        "ratio": round(photo_acc / clean_acc, 4) if clean_acc else None,
        "goal": GOAL,
        "no_digit_answers": int(sum(not s.any() for s in seen)),
        "to_mnist_ms_clean": round(1000 * clean_s / count, 2),
        "to_mnist_ms_photo": round(1000 * photo_s / count, 2),
    }


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=500, help="MNIST test digits to use")
    p.add_argument("--model", type=Path, default=None, help="a safetensors model folder")
    p.add_argument("--tracking-uri", default=None, help="the store holding the champion")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.model:
        from convlens.weights import load_weights

        net, name = load_weights(args.model), str(args.model)
    else:
        net, name = champion_net(args.tracking_uri)
    figures = {"model": name, **measure(net.eval(), args.count)}
    merge_results(args.results, "photos", figures)
    print_json(figures)


if __name__ == "__main__":
    main()
