"""Which pixels of an upload are the digit's ink: the first step of `to_mnist`.

A clean upload (a flat background: drawn on a canvas, rendered, scanned) needs no more than
MNIST's own recipe: its background is one level, and every mark is the digit. A phone photo of
paper does not have one background level: light falls off across the page, so its dark side
can be darker than faint ink on its bright side, and the digit shares the frame with paper
texture, sensor noise, dust, ruled lines and the table beyond the page's edge. So, for an
uneven background only:

1. estimate the paper's brightness everywhere: a smooth (cubic) surface fitted to the
   background, robustly (ink and the table are outliers it learns to ignore), and measure ink
   as contrast against it, (paper - pixel) / paper, which also undoes a dim exposure;
2. find the ink with two thresholds relative to the darkest strokes and the noise left on
   the paper (hysteresis: strong marks, and the faint pixels connected to them);
3. keep the digit: drop straight lines spanning the frame (ruled lines), marks touching the
   frame across most of it (the page's edge), then keep the largest mark and the marks near
   it that are not specks.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from convlens import components

WORK_SIDE = 400  # px: larger uploads are analysed at this size (a 20 px box is the goal)
FIT_SIDE = 64  # px: the background surface is fitted on this coarse grid
MIN_DIGIT = 0.03  # of the frame's longer side: smaller marks are specks, not a digit
NEAR = 0.3  # of the main mark's size: how far other strokes of the digit may lie from it
SPECK = 0.02  # of the main mark's area: smaller marks near it are dust


class NoDigitError(ValueError):
    """The image has no foreground to classify (blank or flat)."""


def digit_ink(image: Image.Image) -> np.ndarray:
    """The digit's ink in [0, 1] (white on black), everything else 0. Raises NoDigitError."""
    gray, exact = _gray(image)
    gray = _shrink(gray)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    level = float(np.median(border))
    if exact or np.percentile(np.abs(border - level), 90) <= 0.02:  # a flat background
        ink = gray if exact or level <= 0.5 else 1.0 - gray
        edge = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
        ink = np.clip(ink - float(np.median(edge)), 0.0, None)
        _check_contrast(float(ink.max()))
        return ink / float(ink.max())  # every mark is the digit, as MNIST's recipe has it
    return _keep_digit(*_photo_contrast(gray))


def _check_contrast(peak: float) -> None:
    if peak < 0.1:
        raise NoDigitError("the image has no digit: it is blank or has no contrast")


def _gray(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Gray levels in [0, 1]; or, for a transparent image, its alpha as ink (exact: True)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha.astype(np.float32) / 255.0, True
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0, False


def _shrink(gray: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """Area-average down so the longer side is at most `side` (also averages noise away)."""
    h, w = gray.shape
    if max(h, w) <= side:
        return gray
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    return np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.BOX))


def _surface(values: np.ndarray) -> tuple[np.ndarray, float]:
    """A cubic surface through the paper in `values`, and the noise (sigma) about it.

    Fitted on a coarse grid by least squares, then again and again on the pixels near it or
    above it: the paper is the bright majority, and what is not paper (ink, dust, lines, the
    table) is darker, so a few rounds of keeping the upper side converge on the paper.
    """
    coarse = _shrink(values, FIT_SIDE)
    ch, cw = coarse.shape
    y, x = np.mgrid[0:ch, 0:cw]
    terms = _terms(x.ravel() / max(cw - 1, 1), y.ravel() / max(ch - 1, 1))
    v = coarse.ravel()
    use = np.ones(v.shape, bool)
    for below in (1.0, 1.0, 1.5, 2.0, 2.5, 2.5):
        fit = terms[use]  # normal equations, 10x10 (no multithreaded BLAS for so little),
        normal = np.einsum("ij,ik->jk", fit, fit) + 1e-6 * np.eye(terms.shape[1])  # never singular
        coef = np.linalg.solve(normal, np.einsum("ij,i->j", fit, v[use]))
        residual = v - terms @ coef
        sigma = max(1.4826 * float(np.median(np.abs(residual[use]))), 0.003)
        use = (residual > -below * sigma) & (residual < 6 * sigma)
    h, w = values.shape
    coarse_surface = Image.fromarray((terms @ coef).reshape(ch, cw).astype(np.float32), mode="F")
    surface = np.asarray(coarse_surface.resize((w, h), Image.BILINEAR))
    noise = 1.4826 * float(np.median(np.abs((values - surface)[values > surface - 3 * sigma])))
    return surface, noise


def _terms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The monomials of a cubic in x and y: linear light, vignettes and spots, tilted paper."""
    return np.stack(
        [np.ones_like(x), x, y, x * x, x * y, y * y, x**3, x * x * y, x * y * y, y**3], axis=1
    )


def _photo_contrast(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Ink as contrast against the paper around it, (paper - pixel) / paper, and its noise.

    Dark marks on a lighter surface; a surface darker than a quarter of white is taken for a
    board or a screen with light marks on it.
    """
    paper, noise = _surface(gray)
    if float(np.median(paper)) < 0.25:
        gray = 1.0 - gray
        paper, noise = _surface(gray)
    paper = np.maximum(paper, 0.05)
    contrast = np.clip((paper - gray) / paper, 0.0, 1.0)
    return contrast, noise / float(np.median(paper))


def _keep_digit(ink: np.ndarray, noise: float) -> np.ndarray:
    """The photo's ink with everything but the digit's strokes set to 0, stretched to [0, 1].

    Strong marks (over a third of the darkest strokes' contrast and well over the noise) are
    the candidates; the faint pixels connected to the kept ones complete their strokes.
    """
    smooth = _box3(ink)
    peak = float(smooth.max())
    _check_contrast(peak)
    low = max(0.2 * peak, 3 * noise)
    strong, faint = _without_lines(smooth > max(0.35 * peak, 6 * noise), smooth > low)
    labels, count = components.label(strong)
    boxes = components.boxes(labels, count)
    shape = ink.shape
    candidates = [i for i, b in enumerate(boxes) if not (_is_edge(b, shape) or _is_rule(b, shape))]
    strokes = (
        i
        for i in sorted(candidates, key=lambda i: -boxes[i][4])
        if not _is_line_piece(boxes[i]) and _stands_out(smooth, labels, i + 1, boxes[i])
    )
    main = next(strokes, None)
    if main is None:
        raise NoDigitError("the image has no digit: only lines and edges stand out")
    top, left, bottom, right, area = boxes[main]
    if max(bottom - top, right - left) < MIN_DIGIT * max(shape):
        raise NoDigitError("the image has no digit: its marks are specks")
    reach = NEAR * max(bottom - top, right - left)
    keep = [
        i + 1
        for i in candidates
        if boxes[i][4] >= SPECK * area
        and boxes[i][0] < bottom + reach
        and boxes[i][2] > top - reach
        and boxes[i][1] < right + reach
        and boxes[i][3] > left - reach
    ]
    seeds = np.isin(labels, keep)
    grown, _ = components.label(faint | seeds)
    digit = np.isin(grown, np.unique(grown[seeds]))
    rows, cols = np.flatnonzero(seeds.any(axis=1)), np.flatnonzero(seeds.any(axis=0))
    box = np.zeros_like(digit)  # faint pixels add edges to strokes, not length to a line
    box[max(rows[0] - 2, 0) : rows[-1] + 3, max(cols[0] - 2, 0) : cols[-1] + 3] = True
    digit &= box
    top_value = float(np.percentile(ink[digit], 99))
    out = np.clip((ink - low) / max(top_value - low, 1e-6), 0.0, 1.0)
    return np.where(digit, out, 0.0).astype(np.float32)


def _box3(image: np.ndarray) -> np.ndarray:
    """Mean over each pixel's 3x3 neighbourhood: single noisy pixels do not count as ink."""
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    return sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def _without_lines(strong: np.ndarray, faint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove straight lines that run across most of the frame (ruled lines, a margin), and
    keep the pixels where a stroke crosses one."""
    for transpose in (False, True):
        s, f = (strong.T, faint.T) if transpose else (strong, faint)
        s, f = _without_rows(s.copy(), f.copy())
        strong, faint = (s.T, f.T) if transpose else (s, f)
    return strong, faint


def _without_rows(strong: np.ndarray, faint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_without_lines` for near-horizontal lines (within 8 degrees): marks lined up along
    one straight line that runs across at least 80% of the frame."""
    h, w = strong.shape
    yy, xx = np.mgrid[0:h, 0:w]
    labels, count = components.label(faint)
    edges = [i + 1 for i, b in enumerate(components.boxes(labels, count)) if _is_edge(b, (h, w))]
    ys, xs = np.nonzero(faint & ~np.isin(labels, edges))
    done: list[tuple[float, int]] = []
    for angle in np.radians(np.arange(-8, 8.01, 0.5)):
        rho = np.round(ys * np.cos(angle) - xs * np.sin(angle)).astype(int)
        counts = np.bincount(rho - rho.min()) if len(rho) else np.zeros(1, int)
        for bin_ in np.flatnonzero(counts >= 0.4 * w):
            on = xs[rho - rho.min() == bin_]
            line = int(bin_ + rho.min())
            if np.ptp(on) >= 0.8 * w and not any(abs(line - d) <= 3 for _, d in done):
                done.append((angle, line))
    for angle, line in done:
        distance = yy * np.cos(angle) - xx * np.sin(angle) - line
        near = np.abs(distance) <= 6
        profile = np.bincount(np.round(distance[near] + 6).astype(int), faint[near], 13)
        width = int(max(1, (profile >= 0.3 * profile.max()).sum()))
        band = np.abs(distance) <= width / 2 + 1.5
        reach = width // 2 + 3
        above, below = np.zeros_like(faint), np.zeros_like(faint)
        above[reach:] = faint[:-reach]
        below[:-reach] = faint[reach:]
        crossing = band & above & below  # a stroke going on across the line
        strong &= ~band | crossing
        faint &= ~band | crossing
    return strong, faint


def _is_rule(box: tuple[int, int, int, int, int], shape: tuple[int, int]) -> bool:
    """A thin mark along most of the frame (what is left of a ruled line, a shadow's edge)."""
    top, left, bottom, right, _ = box
    h, w = shape
    long, thin = (
        (right - left, bottom - top)
        if right - left > bottom - top
        else (bottom - top, right - left)
    )
    return long >= 0.7 * (w if right - left > bottom - top else h) and thin <= 0.1 * min(h, w)


def _is_line_piece(box: tuple[int, int, int, int, int]) -> bool:
    """Far wider than tall: what line removal left of a ruled line. No digit lies on its side,
    so this is never the digit's main mark (a 7's bar or a 5's flag joins the digit as a
    neighbour of its main stroke)."""
    top, left, bottom, right, _ = box
    return right - left >= 4 * (bottom - top)


def _stands_out(
    smooth: np.ndarray, labels: np.ndarray, label: int, box: tuple[int, int, int, int, int]
) -> bool:
    """Whether the mark is at least twice as dark as the unmarked paper right around it: a
    stroke, not a patch of shading the background surface missed (a vignette's corner), whose
    surroundings are nearly as dark as it is."""
    top, left, bottom, right, _ = box
    pad = max(3, max(bottom - top, right - left) // 4)
    rows = slice(max(top - pad, 0), bottom + pad)
    cols = slice(max(left - pad, 0), right + pad)
    window, marks = smooth[rows, cols], labels[rows, cols]
    around = window[marks == 0]
    if around.size == 0:
        return True
    return float(np.median(window[marks == label])) >= 2 * float(np.median(around))


def _is_edge(box: tuple[int, int, int, int, int], shape: tuple[int, int]) -> bool:
    """A mark touching the frame and reaching across most of it: the page's edge, a line."""
    top, left, bottom, right, _ = box
    h, w = shape
    touches = top == 0 or left == 0 or bottom == h or right == w
    return touches and (bottom - top >= 0.6 * h or right - left >= 0.6 * w)
