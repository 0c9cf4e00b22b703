"""How the network organises digits: its last hidden layer for a fixed sample of test digits,
projected to 2D.

- Training: a PCA scatter of the sample per epoch (`pca_image`), so the MLflow step slider
  shows the classes pulling apart; the sample itself (`write_sample`) goes into the logged model.
- Packaging: a t-SNE map of the sample, computed once (`build_map`) and shipped with the Bento.
- Serving: a new digit placed on that map (`place`): t-SNE has no transform, so the digit goes
  to the distance-weighted mean position of its nearest sample digits in activation space.

scikit-learn is imported inside `tsne_positions` only: serving ships without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.artifact import EMBEDDING_FILE, EMBEDDING_SAMPLE_FILE
from convlens.model import ConvNet, Dense, activations
from convlens.preprocessing import normalize

SAMPLE_SIZE = 2000
SAMPLE_SEED = 14  # the sample is the same for every run on the same test set
TSNE_SEED = 0
TSNE_ITERATIONS = 500  # sklearn's default 1,000 moves 2,000 points little after 500
NEIGHBOURS = 10
# tab10: the colours the web page's map uses too (serving/ui/map.js).
COLOURS = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.uint8,
)


def embedding_layer(net: ConvNet) -> str:
    """The last hidden layer: the last dense layer before the output layer (fc1, after ReLU)."""
    dense = [name for name, m in net.named_children() if isinstance(m, Dense)]
    if len(dense) < 2:
        raise ValueError("the network has no hidden dense layer to embed digits with")
    return dense[-2]


def sample_indices(count: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """A fixed random sample of `size` of `count` test digits (all of them when fewer), sorted."""
    chosen = np.random.default_rng(seed).permutation(count)[: min(size, count)]
    return np.sort(chosen)


def features(net: ConvNet, images: torch.Tensor | np.ndarray, batch: int = 500) -> np.ndarray:
    """(N, D) float32 activations of the last hidden layer for uint8 digits (N, 28, 28)."""
    layer = embedding_layer(net)
    images = torch.as_tensor(np.asarray(images))
    device = next(net.parameters()).device
    out = []
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = normalize(images[start : start + batch]).to(device)
            out.append(activations(net, x, [layer])[layer].float().cpu())
    net.train(was_training)
    return torch.cat(out).numpy()


def pca(values: np.ndarray, components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Principal-component coordinates (N, components) and their explained-variance ratios.

    Signs are fixed (each component's largest loading positive), so consecutive epochs' plots
    do not flip for no reason."""
    centred = values - values.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:components]
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    variance = singular**2
    ratio = variance[:components] / max(variance.sum(), 1e-12)
    return centred @ vt.T, ratio


# Panels wider than tall: the whole picture is four times as wide as tall, the shape MLflow's
# image cards show whole (each axis is scaled to its own range anyway).
PANEL_W, PANEL_H = 360, 250
MARGIN = 24
LEGEND = 90


def _panel(xy: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One scatter (PANEL_H x PANEL_W RGB) of points coloured by label, 3x3-pixel dots."""
    canvas = np.full((PANEL_H, PANEL_W, 3), 255, dtype=np.uint8)
    low, high = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
    span = np.where(high > low, high - low, 1.0)
    scaled = np.clip((xy - low) / span, 0, 1) * (np.array([PANEL_W, PANEL_H]) - 7) + 3
    cols = scaled[:, 0].round().astype(int)
    rows = (PANEL_H - 1 - scaled[:, 1]).round().astype(int)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            canvas[rows + dy, cols + dx] = COLOURS[labels]
    return canvas


def pca_image(values: np.ndarray, labels: np.ndarray, title: str = "") -> Image.Image:
    """PC1-PC2, PC1-PC3 and PC2-PC3 scatters side by side with a legend: a wide picture, the
    shape MLflow's image cards show whole."""
    coords, ratio = pca(values)
    labels = np.asarray(labels, dtype=int)
    pairs = [(a, b) for a, b in [(0, 1), (0, 2), (1, 2)] if b < coords.shape[1]]
    width = MARGIN + len(pairs) * (PANEL_W + MARGIN) + LEGEND
    image = Image.new("RGB", (width, PANEL_H + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(image)
    for i, (a, b) in enumerate(pairs):
        x = MARGIN + i * (PANEL_W + MARGIN)
        image.paste(Image.fromarray(_panel(coords[:, [a, b]], labels)), (x, MARGIN))
        draw.rectangle((x - 1, MARGIN - 1, x + PANEL_W, MARGIN + PANEL_H), outline=(200, 200, 200))
        caption = f"PC{a + 1} ({ratio[a]:.0%}) across, PC{b + 1} ({ratio[b]:.0%}) up"
        draw.text((x, MARGIN + PANEL_H + 6), caption, fill=(60, 60, 60))
    draw.text((MARGIN, 6), title, fill=(0, 0, 0))
    legend_x = width - LEGEND + 10
    for digit in range(10):
        y = MARGIN + digit * 25
        draw.rectangle(
            (legend_x, y, legend_x + 14, y + 14), fill=tuple(int(c) for c in COLOURS[digit])
        )
        draw.text((legend_x + 22, y + 2), str(digit), fill=(0, 0, 0))
    return image


@dataclass(frozen=True)
class Sample:
    """The fixed test digits the embedding is drawn for."""

    test_indices: np.ndarray  # (N,) int: positions in the run's test set
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int

    @classmethod
    def of(cls, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> Sample:
        chosen = sample_indices(len(labels))
        return cls(
            chosen.astype(np.int64),
            np.asarray(images)[chosen].astype(np.uint8),
            np.asarray(labels)[chosen].astype(np.int64),
        )

    def save(self, folder: Path) -> Path:
        path = Path(folder) / EMBEDDING_SAMPLE_FILE
        np.savez_compressed(
            path, test_indices=self.test_indices, images=self.images, labels=self.labels
        )
        return path

    @classmethod
    def load(cls, path: Path) -> Sample:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["test_indices"], data["images"], data["labels"])


def tsne_positions(values: np.ndarray, seed: int = TSNE_SEED) -> np.ndarray:
    """A t-SNE map of `values` (N, D), scaled into [0, 1]^2 (float32)."""
    from sklearn.manifold import TSNE

    # PCA to 50 dimensions first (as van der Maaten advises): the same map, in a third of the time.
    reduced, _ = pca(values, min(50, *values.shape))
    perplexity = float(min(30, max(2, (len(values) - 1) // 3)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=TSNE_ITERATIONS)
    xy = tsne.fit_transform(reduced.astype(np.float32))
    xy -= xy.min(axis=0)
    return (xy / max(float(xy.max()), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class EmbeddingMap:
    """What the service serves: the sample, its activations and its t-SNE positions."""

    layer: str
    sample: Sample
    features: np.ndarray  # (N, D) float32
    positions: np.ndarray  # (N, 2) float32 in [0, 1]

    def save(self, folder: Path) -> Path:
        path = Path(folder) / EMBEDDING_FILE
        np.savez_compressed(
            path,
            layer=np.array(self.layer),
            test_indices=self.sample.test_indices,
            images=self.sample.images,
            labels=self.sample.labels,
            features=self.features,
            positions=self.positions,
        )
        return path

    @classmethod
    def load(cls, path: Path) -> EmbeddingMap:
        with np.load(path, allow_pickle=False) as data:
            sample = Sample(data["test_indices"], data["images"], data["labels"])
            return cls(str(data["layer"]), sample, data["features"], data["positions"])


def build_map(net: ConvNet, sample: Sample) -> EmbeddingMap:
    """Packaging's one-off t-SNE of the sample as `net` (the packaged model) sees it."""
    values = features(net, sample.images)
    return EmbeddingMap(embedding_layer(net), sample, values, tsne_positions(values))


@dataclass(frozen=True)
class Placement:
    position: np.ndarray  # (2,)
    neighbours: np.ndarray  # (k,) indices into the sample, nearest first
    distances: np.ndarray  # (k,)


def place(query: np.ndarray, emap: EmbeddingMap, k: int = NEIGHBOURS) -> Placement:
    """Where a digit with activations `query` (D,) falls on the map: the mean of its `k`
    nearest sample digits' positions (Euclidean, in activation space), weighted 1/distance."""
    distances = np.linalg.norm(emap.features - query[None].astype(np.float32), axis=1)
    k = min(k, len(distances))
    nearest = np.argpartition(distances, k - 1)[:k]
    nearest = nearest[np.argsort(distances[nearest], kind="stable")]
    weights = 1.0 / (distances[nearest] + 1e-6)
    position = (emap.positions[nearest] * weights[:, None]).sum(axis=0) / weights.sum()
    return Placement(position.astype(np.float32), nearest, distances[nearest])


SPRITE_COLUMNS = 50


def sprite(images: np.ndarray, columns: int = SPRITE_COLUMNS) -> Image.Image:
    """All sample digits (N, 28, 28) in one grayscale picture, `columns` to a row in sample
    order: the web page draws any digit of the map from it with one request."""
    count, height, width = images.shape
    rows = -(-count // columns)
    canvas = np.zeros((rows * height, columns * width), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return Image.fromarray(canvas)
