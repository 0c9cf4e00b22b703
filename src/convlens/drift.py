"""Input drift: how far recent inputs are from the training data, as population stability index.

The model only knows what MNIST digits look like, so the service watches a few statistics of
each 28x28 digit as the model sees it (after `to_mnist` for uploads) and compares their
recent distribution with MNIST's. The statistics are cheap and readable: how much of the
image is ink, how bright it is on average, how far the ink spreads around its centre of mass,
and how far that centre is from the middle of the image.

The reference is computed once from the MNIST training set (`python -m convlens.drift`) and
shipped with the service (`serving/drift_reference.json`): both sides bin with the reference's
edges, so the bins are the same by construction. PSI reads as usual: < 0.1 stable, 0.1-0.25
moderate shift, > 0.25 drifted.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATISTICS = ("ink_fraction", "mean_intensity", "spread", "centre_offset")
BINS = 10
INK_LEVEL = 0.5  # a pixel at or above half brightness counts as ink
# An empty bin on either side would make PSI infinite; it counts as this proportion instead.
EMPTY_BIN = 1e-4
STABLE, DRIFTED = 0.1, 0.25  # the usual reading of PSI

_SIZE = 28
# Pixel coordinates about the image's centre, and their squares: a digit's moments follow
# from its row and column sums (no matrix product: BLAS threads cost more than they save here).
_AXIS = np.arange(_SIZE, dtype=np.float64) - (_SIZE - 1) / 2
_POWERS = np.stack([np.ones(_SIZE), _AXIS, _AXIS**2], axis=1)


def statistics(images: np.ndarray) -> np.ndarray:
    """(N, len(STATISTICS)) float64 for N 28x28 digits, uint8 0-255 or float 0-1, shaped
    (N, 28, 28) or (N, 1, 28, 28). A blank image has spread and centre offset 0."""
    x = np.asarray(images).reshape(-1, _SIZE, _SIZE)
    scale, level = (255.0, math.ceil(INK_LEVEL * 255)) if x.dtype == np.uint8 else (1.0, INK_LEVEL)
    ink = np.count_nonzero((x >= level).reshape(len(x), -1), axis=1) / _SIZE**2
    rows = (x.sum(axis=2, dtype=np.float64)[:, :, None] * _POWERS).sum(axis=1)
    cols = (x.sum(axis=1, dtype=np.float64)[:, :, None] * _POWERS).sum(axis=1)
    mass = rows[:, 0]
    safe = np.where(mass > 0, mass, 1.0)
    cy, cx = rows[:, 1] / safe, cols[:, 1] / safe
    offset = np.hypot(cy, cx)
    spread = np.sqrt(np.clip((rows[:, 2] + cols[:, 2]) / safe - offset**2, 0.0, None))
    return np.stack([ink, mass / (scale * _SIZE**2), spread, offset], axis=1)


@dataclass(frozen=True)
class Reference:
    """Per statistic, the inner bin edges and the training data's proportion in each bin."""

    edges: tuple[np.ndarray, ...]  # len(STATISTICS) arrays of inner edges, increasing
    proportions: tuple[np.ndarray, ...]  # len(edges[i]) + 1 proportions, summing to 1
    source: str

    @property
    def bins(self) -> int:
        """Bins of the widest statistic; every statistic's bins fit in this many slots."""
        return max(len(edges) + 1 for edges in self.edges)

    @functools.cached_property
    def _edge_matrix(self) -> np.ndarray:
        """(statistics, bins - 1) inner edges, padded with +inf (no value reaches those)."""
        matrix = np.full((len(STATISTICS), self.bins - 1), np.inf)
        for i, edges in enumerate(self.edges):
            matrix[i, : len(edges)] = edges
        return matrix

    @functools.cached_property
    def expected(self) -> np.ndarray:
        """(statistics, bins) training proportions, padded with 0 (padding adds 0 to PSI)."""
        matrix = np.zeros((len(STATISTICS), self.bins))
        for i, proportions in enumerate(self.proportions):
            matrix[i, : len(proportions)] = proportions
        return matrix

    def bin_indices(self, stats: np.ndarray) -> np.ndarray:
        """(N, len(STATISTICS)) bin numbers of `statistics` rows: how many inner edges each
        value reaches (numpy's searchsorted, side="right"), for all statistics at once."""
        return (stats[:, :, None] >= self._edge_matrix).sum(axis=2)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "ink_level": INK_LEVEL,
            "statistics": {
                name: {"edges": edges.tolist(), "proportions": proportions.tolist()}
                for name, edges, proportions in zip(
                    STATISTICS, self.edges, self.proportions, strict=True
                )
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> Reference:
        if tuple(data["statistics"]) != STATISTICS or data["ink_level"] != INK_LEVEL:
            raise ValueError("the drift reference was made for other statistics: rebuild it")
        stats = data["statistics"]
        return cls(
            edges=tuple(np.asarray(stats[name]["edges"], dtype=np.float64) for name in STATISTICS),
            proportions=tuple(
                np.asarray(stats[name]["proportions"], dtype=np.float64) for name in STATISTICS
            ),
            source=str(data["source"]),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Reference:
        return cls.from_json(json.loads(Path(path).read_text()))


def reference_from(images: np.ndarray, source: str, bins: int = BINS) -> Reference:
    """Quantile bins of the training digits' statistics (equal mass where ties allow), and
    the training digits' proportion in each: the usual PSI set-up."""
    stats = statistics(images)
    edges, proportions = [], []
    for column in stats.T:
        inner = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(inner, column, side="right"), minlength=len(inner) + 1)
        edges.append(inner)
        proportions.append(counts / counts.sum())
    return Reference(edges=tuple(edges), proportions=tuple(proportions), source=source)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of proportions `actual` against `expected` (same bins):
    sum((a - e) * ln(a / e)). 0 for the same distribution; empty bins count as EMPTY_BIN."""
    return float(psi_rows(np.atleast_2d(expected), np.atleast_2d(actual))[0])


def psi_rows(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """`psi` of each row of `actual` against the same row of `expected`."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EMPTY_BIN, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EMPTY_BIN, None)
    return np.sum((a - e) * np.log(a / e), axis=-1)


def reading(score: float) -> str:
    """PSI in words: stable, moderate or drifted."""
    if score < STABLE:
        return "stable"
    return "moderate" if score <= DRIFTED else "drifted"


class Window:
    """The bins of the last `size` inputs, and their PSI per statistic against `reference`.

    A ring buffer of bin numbers. Adding inputs only queues them: their statistics are
    computed for `batch` inputs at a time (or when PSI is asked for), since numpy's cost per
    call, not per digit, dominates for one 28x28 digit. PSI costs one `bincount` over the
    buffer, whatever the window size.
    """

    def __init__(self, reference: Reference, size: int, batch: int = 64):
        self.reference = reference
        self.size = size
        self.batch = batch
        self._filled = 0
        self._bins = np.zeros((size, len(STATISTICS)), dtype=np.intp)
        self._next = 0
        self._offsets = np.arange(len(STATISTICS)) * reference.bins
        self._queued: list[np.ndarray] = []
        self._queued_inputs = 0

    @property
    def filled(self) -> int:
        """Inputs in the window, queued ones included (at most `size`)."""
        return min(self.size, self._filled + self._queued_inputs)

    def add(self, images: np.ndarray) -> None:
        """Queue 28x28 digits, as `statistics` takes them."""
        images = np.asarray(images).reshape(-1, _SIZE, _SIZE)
        self._queued.append(images)
        self._queued_inputs += len(images)
        if self._queued_inputs >= self.batch:
            self._flush()

    def _flush(self) -> None:
        """The queued inputs' bins into the ring buffer, in the order they came."""
        queued, self._queued, self._queued_inputs = self._queued, [], 0
        runs = itertools.groupby(queued, key=lambda images: images.dtype)  # uint8, float
        stats = [statistics(np.concatenate(list(run))) for _, run in runs]
        if not stats:
            return
        bins = self.reference.bin_indices(np.concatenate(stats))[-self.size :]
        end = self._next + len(bins)
        if end <= self.size:
            self._bins[self._next : end] = bins
        else:
            rows = np.arange(self._next, end) % self.size
            self._bins[rows] = bins
        self._next = end % self.size
        self._filled = min(self.size, self._filled + len(bins))

    def psi(self) -> dict[str, float]:
        """PSI per statistic over the inputs in the window ({} while it is empty)."""
        self._flush()
        if not self._filled:
            return {}
        bins = self.reference.bins
        counts = np.bincount(
            (self._bins[: self._filled] + self._offsets).ravel(), minlength=len(STATISTICS) * bins
        ).reshape(len(STATISTICS), bins)
        scores = psi_rows(self.reference.expected, counts / self._filled)
        return dict(zip(STATISTICS, scores.tolist(), strict=True))


def mnist_reference(data_dir: str | Path) -> Reference:
    """The reference of the MNIST training set under `data_dir` (torchvision's layout)."""
    from convlens.data import load_mnist  # training code: not part of the serving Bento

    images, _ = load_mnist(str(data_dir), train=True, download=False)
    return reference_from(images.numpy(), source=f"MNIST train, {len(images)} digits")


if __name__ == "__main__":  # python -m convlens.drift: rebuild the shipped reference
    import os
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "serving/drift_reference.json")
    mnist_reference(os.environ.get("CONVLENS_DATA_DIR", "data")).save(out)
    print(f"wrote {out}")
