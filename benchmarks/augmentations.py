"""What each training augmentation (`convlens.augment`) buys on MNIST and on drawn/photo digits.

    uv run --frozen python -m benchmarks.augmentations [--epochs 5] [--subset N] [--seeds 42]
        [--only none,shift,...] [--results FILE] [hydra overrides]

For each setting (none; each augmentation alone at the strength it would get in conf; all of
them together), trains the `make train` network, optimizer and schedule (composed from conf/)
in a bare loop over the same 55k split (or `--subset`), the augmentation applied per batch
after `normalize` as `MNISTDataModule` does, then measures the final weights on:

- MNIST test (10k),
- `drawn`: the first `--digits` MNIST test digits redrawn the ways people differ from MNIST's
  writers, each sent through `convlens.preprocessing.to_mnist` like an upload: a thicker pen,
  a thinner pen, slanted 20 degrees either way, and small and off-centre on a white page;
- `photos`: the same digits as phone photos from `tests/photos.py` (part 1 of issue 12), when
  that module exists.

The bare loop tests the last weights; `make train` tests the best checkpoint by val/acc. The
defaults (5 epochs, 55k) are the default run's: about a minute a setting on an idle 2-core
machine, ~10 min for 2 epochs on 6k under a load of 20 (`--cache` keeps the redrawn digits).
"""

from __future__ import annotations

import importlib
import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image, ImageFilter

from benchmarks.bare_loop import train_tensors
from benchmarks.common import merge_results, parser, print_json
from benchmarks.config import train_config
from convlens.augment import Augmentations
from convlens.preprocessing import NoDigitError, normalize, to_mnist

STRENGTHS = {"shift": 2.0, "scale": 0.15, "slant": 15.0, "stroke": 0.5}
SETTINGS = {
    "none": {},
    **{name: {name: value} for name, value in STRENGTHS.items()},
    "all": STRENGTHS,
}


def train(cfg, images, labels, augment: Augmentations, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = instantiate(cfg.model, _convert_="all").to(memory_format=torch.channels_last).train()
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    batch = cfg.data.batch_size
    total = (len(labels) + batch - 1) // batch * epochs
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=total)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(labels), batch):
            index = order[i : i + batch]
            x = augment(normalize(images[index]), generator)
            loss = F.cross_entropy(
                net(x.contiguous(memory_format=torch.channels_last)), labels[index]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    preds = torch.cat(
        [net(normalize(images[i : i + 1000])).argmax(1) for i in range(0, len(labels), 1000)]
    )
    return float((preds == labels).float().mean())


def _paper(digit: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Dark ink on a white 200x200 page, the digit ~40 px tall somewhere on it."""
    size = int(rng.integers(34, 48))
    small = digit.resize((size, size), Image.LANCZOS)
    page = np.full((200, 200), 235.0)
    top, left = rng.integers(0, 200 - size, 2)
    page[top : top + size, left : left + size] -= np.asarray(small, dtype=np.float64) * 0.85
    page += rng.normal(0, 4, page.shape)
    return Image.fromarray(page.clip(0, 255).astype(np.uint8))


def redraw(image: np.ndarray, how: str, rng: np.random.Generator) -> Image.Image:
    """One MNIST digit (white on black, 28x28) redrawn at 4x as a person might draw it."""
    big = Image.fromarray(image).resize((112, 112), Image.BICUBIC)
    if how == "thick pen":
        return big.filter(ImageFilter.MaxFilter(9))
    if how == "thin pen":
        return big.filter(ImageFilter.MinFilter(5))
    if how == "slanted":
        shear = np.tan(np.deg2rad(20.0)) * rng.choice([-1, 1])
        wide = Image.new("L", (168, 112))
        wide.paste(big, (28, 0))
        return wide.transform(
            wide.size, Image.AFFINE, (1, shear, -shear * 56, 0, 1, 0), Image.BILINEAR
        )
    if how == "small, off-centre":
        return _paper(big, rng)
    raise ValueError(how)


def drawn_set(images: torch.Tensor, labels: torch.Tensor, digits: int) -> dict[str, tuple]:
    """Per way of drawing: (uint8 N x 28 x 28 after `to_mnist`, labels)."""
    rng = np.random.default_rng(0)
    sets = {}
    for how in ("thick pen", "thin pen", "slanted", "small, off-centre"):
        seen, kept = [], []
        for i in range(digits):
            try:
                seen.append(to_mnist(redraw(images[i].numpy(), how, rng)))
                kept.append(int(labels[i]))
            except NoDigitError:
                continue  # a thin pen can erase a faint digit: not counted either way
        sets[how] = (torch.from_numpy(np.stack(seen)), torch.tensor(kept))
    return sets


def photo_set(images: torch.Tensor, labels: torch.Tensor, digits: int) -> tuple | None:
    """The same digits as phone photos (JPEG) from tests/photos.py, if that generator exists."""
    try:
        photos = importlib.import_module("tests.photos")
    except ImportError:
        return None
    seen, kept = [], []
    for i in range(digits):
        try:
            jpeg = photos.photo_jpeg(images[i].numpy(), seed=i)
            seen.append(to_mnist(Image.open(io.BytesIO(jpeg))))
            kept.append(int(labels[i]))
        except NoDigitError:
            kept.append(-1)  # nothing found counts as wrong
            seen.append(np.zeros((28, 28), np.uint8))
    return torch.from_numpy(np.stack(seen)), torch.tensor(kept)


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--subset", type=int, default=0, help="train on N images (0: all 55k)")
    p.add_argument("--seeds", default="42")
    p.add_argument("--digits", type=int, default=1000, help="MNIST test digits redrawn")
    p.add_argument("--only", default=",".join(SETTINGS), help="which settings to run")
    p.add_argument("--cache", type=Path, default=None, help="keep the redrawn digits here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for make train")
    args = p.parse_args(argv)
    cfg = train_config(*args.overrides, *([f"data.subset={args.subset}"] if args.subset else []))
    images, labels = train_tensors(cfg)
    from torchvision.datasets import MNIST

    test = MNIST(cfg.data.root, train=False, download=False)
    cache = args.cache and args.cache.with_suffix(f".{args.digits}.pt")
    if cache and cache.exists():
        drawn, photos = torch.load(cache)
    else:
        drawn = drawn_set(test.data, test.targets, args.digits)
        photos = photo_set(test.data, test.targets, args.digits)
        if cache:
            torch.save((drawn, photos), cache)
    evals = {"mnist": (test.data, test.targets), **drawn, **({"photos": photos} if photos else {})}
    result = {"epochs": args.epochs, "train_images": len(labels), "settings": {}}
    for name in args.only.split(","):
        augment = Augmentations.of(SETTINGS[name])
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            start = time.perf_counter()
            net = train(cfg, images, labels, augment, args.epochs, seed)
            row = {key: accuracy(net, x, y) for key, (x, y) in evals.items()}
            row["drawn"] = float(np.mean([row[key] for key in drawn]))
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(name, seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
        result["settings"][name] = {
            "augmentations": augment.describe(),
            **{key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]},
        }
    print_json(result)
    merge_results(args.results, "augmentations", result)
    return result


if __name__ == "__main__":
    main()
