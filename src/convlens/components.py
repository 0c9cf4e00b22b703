"""Connected components of a binary mask, in plain numpy (serving ships without scipy):
what `convlens.ink` uses to tell the digit's strokes from lines, edges and dust."""

from __future__ import annotations

import numpy as np


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of `mask`: labels 1..count, 0 for the background.

    On the marked pixels only: each takes the smallest label among its neighbours, hooks its
    old label's root to it, then labels jump to their roots; a few rounds even for long
    strokes.
    """
    h, w = mask.shape
    padded = np.pad(mask, 1).ravel()
    where = np.flatnonzero(padded)
    index = np.full(padded.size, -1)
    index[where] = np.arange(len(where))
    offsets = [dy * (w + 2) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    neighbours = np.stack([index[where + o] for o in offsets], axis=1)
    neighbours = np.where(neighbours < 0, np.arange(len(where))[:, None], neighbours)
    labels = np.arange(len(where))
    while True:
        lowest = labels[neighbours].min(axis=1)
        before = labels.copy()
        np.minimum.at(labels, before, lowest)
        np.minimum(labels, lowest, out=labels)
        while not np.array_equal(jumped := labels[labels], labels):
            labels = jumped
        if np.array_equal(labels, before):
            break
    roots, dense = np.unique(labels, return_inverse=True)
    out = np.zeros(padded.size, np.int32)
    out[where] = dense + 1
    return out.reshape(h + 2, w + 2)[1:-1, 1:-1], len(roots)


def boxes(labels: np.ndarray, count: int) -> list[tuple[int, int, int, int, int]]:
    """Each component's (top, left, bottom, right, area), bottom and right exclusive."""
    ys, xs = np.nonzero(labels)
    which = labels[ys, xs] - 1
    area = np.bincount(which, minlength=count)
    top = np.full(count, labels.shape[0]), np.full(count, labels.shape[1])
    np.minimum.at(top[0], which, ys)
    np.minimum.at(top[1], which, xs)
    bottom, right = np.zeros(count, int), np.zeros(count, int)
    np.maximum.at(bottom, which, ys + 1)
    np.maximum.at(right, which, xs + 1)
    return [
        (int(top[0][i]), int(top[1][i]), int(bottom[i]), int(right[i]), int(area[i]))
        for i in range(count)
    ]
