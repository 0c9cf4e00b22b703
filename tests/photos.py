"""Phone photos of handwritten digits, made from MNIST digits: what `to_mnist` must survive.

A photo is a digit written in ink on a sheet of paper and photographed under uneven light.
Everything about it is drawn from a seeded RNG per image (`make_photo(digit, seed)`), over
ranges wide enough that tuning preprocessing to them is not tuning to one look (`RANGES`):

- frame: 240-900 px wide, aspect (height / width) 0.7-1.4;
- digit: ink height 15-55% of the frame's shorter side, anywhere in it (margin 3%), tilted
  -12..12 degrees, pen weight from thin to heavy (MNIST's strokes re-thresholded at 0.25-0.60);
- ink: black, blue or pencil grey, reflectance 0.05-0.50 of the paper's (0.50: faint pencil);
- paper: white with a tint of up to 8% per channel, fibre texture (fine, 0.5-2.5%) and
  blotches (coarse, 0-5%);
- light: a linear fall-off across the page (45-70% darker on its dark side), a radial one
  (vignette or spot, 45-70% alone, 0-45% with a linear one), or both; exposure 0.7-1.0;
  illuminant colour from warm to cool.
  At the strong end the dark side of the paper is darker than faint ink on the bright side,
  so no single threshold separates ink from paper;
- 0-30 dust specks, 0.6-4 px across in a 500 px frame (scaled with the frame);
- sometimes a ruled line (40%: light blue or grey, 1-3 px, through the digit half the time)
  and sometimes the paper's edge with the table beyond it (25%, up to ~20% of the frame);
- blur (Gaussian, radius 0.3-1.6 px), sensor noise (Gaussian, 1-4% per channel) and JPEG at
  quality 35-92.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# The range of every parameter, as (low, high) for uniform draws: the one place they live.
RANGES: dict[str, tuple[float, float]] = {
    "width_px": (240, 900),
    "aspect": (0.7, 1.4),
    "digit_height": (0.15, 0.55),  # of the frame's shorter side
    "tilt_deg": (-12.0, 12.0),
    "pen_threshold": (0.25, 0.60),  # lower: heavier strokes
    "ink_reflectance": (0.05, 0.50),
    "paper_tint": (-0.08, 0.08),
    "fibre_noise": (0.005, 0.025),
    "blotches": (0.0, 0.05),
    "linear_falloff": (0.45, 0.7),
    "radial_falloff": (0.0, 0.45),
    "exposure": (0.7, 1.0),
    "specks": (0, 30),
    "speck_radius_px_at_500": (0.6, 4.0),
    "ruled_line_probability": (0.4, 0.4),
    "ruled_line_reflectance": (0.45, 0.85),
    "ruled_line_width_px_at_500": (1.0, 3.0),
    "edge_probability": (0.25, 0.25),
    "table_reflectance": (0.05, 0.45),
    "blur_radius_px": (0.3, 1.6),
    "sensor_noise": (0.01, 0.04),
    "jpeg_quality": (35, 92),
}
MARGIN = 0.03  # of the frame: the digit is whole in the picture
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # PIL's RGB -> L weights
INK_HUES = [np.array(h, np.float32) for h in ([1, 1, 1], [0.6, 0.7, 1.4], [1.0, 1.0, 1.08])]


@dataclass(frozen=True)
class Style:
    """What was drawn for one photo, to print or keep beside a failure."""

    seed: int
    width: int
    height: int
    digit_box: tuple[int, int, int, int]  # left, top, right, bottom of the ink
    tilt_deg: float
    ink_reflectance: float
    light: str
    darkest_paper: float  # gray level of the paper in its darkest corner (0-1)
    faintest_ink_on_brightest_paper: float
    specks: int
    ruled_line: bool
    edge: bool
    blur_radius_px: float
    jpeg_quality: int

    def as_dict(self) -> dict:
        return asdict(self)


def _uniform(rng: np.random.Generator, name: str) -> float:
    low, high = RANGES[name]
    return float(rng.uniform(low, high))


def _digit_coverage(digit: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The MNIST digit as pen coverage (0-1) at `size` px, re-thresholded for a pen weight."""
    up = Image.fromarray(digit).resize((size, size), Image.BICUBIC)
    a = np.asarray(up, dtype=np.float32) / 255.0
    t = _uniform(rng, "pen_threshold")
    edge = 0.12
    cov = np.clip((a - (t - edge)) / (2 * edge), 0.0, 1.0)
    return cov * cov * (3 - 2 * cov)  # smoothstep: the soft edge of a real stroke


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise varying over about 1/cells of the frame (paper blotches)."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(image)


def _line_coverage(
    shape: tuple[int, int], point: tuple[float, float], angle: float, width: float
) -> np.ndarray:
    """Anti-aliased coverage of an infinite straight line through `point` at `angle` rad."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    distance = np.abs((xs - point[0]) * math.sin(angle) - (ys - point[1]) * math.cos(angle))
    return np.clip(width / 2 - distance + 0.5, 0.0, 1.0)


def _shading(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Light falling on the page (1 = full): linear, radial, or both."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = str(rng.choice(["linear", "radial", "both"], p=[0.4, 0.2, 0.4]))
    shade = np.ones(shape, np.float32)
    if kind in ("linear", "both"):
        theta = rng.uniform(0, 2 * math.pi)
        proj = xs * math.cos(theta) + ys * math.sin(theta)
        proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        shade *= 1 - _uniform(rng, "linear_falloff") * proj
    if kind in ("radial", "both"):
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / float(w * w + h * h)
        falloff = _uniform(rng, "radial_falloff") if kind == "both" else rng.uniform(0.45, 0.7)
        shade *= 1 - falloff * np.clip(r2 / r2.max(), 0, 1)
    return shade, kind


def make_photo(digit: np.ndarray, seed: int) -> tuple[Image.Image, Style]:
    """A photo (RGB, before JPEG) of the 28x28 MNIST `digit` written on paper, and its style."""
    rng = np.random.default_rng(seed)
    width = int(_uniform(rng, "width_px"))
    height = int(width * _uniform(rng, "aspect"))
    shape = (height, width)
    short = min(width, height)
    px = short / 500  # sizes in px at 500 px, scaled to this frame

    # The digit's ink: MNIST's 20 px box becomes digit_height of the shorter side.
    scale = _uniform(rng, "digit_height") * short / 20
    tilt = _uniform(rng, "tilt_deg")
    cov = _digit_coverage(digit, max(8, round(28 * scale)), rng)
    cov_img = Image.fromarray(cov, mode="F").rotate(tilt, Image.BICUBIC, expand=True)
    cov = np.clip(np.asarray(cov_img), 0, 1)
    rows, cols = np.flatnonzero(cov.max(1) > 0.05), np.flatnonzero(cov.max(0) > 0.05)
    if len(rows):  # an all-zero "digit" makes a photo of blank paper
        cov = cov[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    dh, dw = cov.shape
    margin = round(MARGIN * short)
    top = int(rng.integers(margin, max(margin + 1, height - dh - margin)))
    left = int(rng.integers(margin, max(margin + 1, width - dw - margin)))
    ink_cov = np.zeros(shape, np.float32)
    ink_cov[top : top + dh, left : left + dw] = cov[: height - top, : width - left]
    box = (left, top, left + dw, top + dh)

    # Paper: tinted white, fibres and blotches.
    tint = 1 + rng.uniform(*RANGES["paper_tint"], size=3).astype(np.float32)
    texture = 1 + _uniform(rng, "blotches") * _smooth_noise(rng, shape, int(rng.integers(3, 9)))
    texture += _uniform(rng, "fibre_noise") * rng.standard_normal(shape).astype(np.float32)
    reflect = np.clip(texture[..., None] * tint / tint.max(), 0, 1)

    ruled = bool(rng.random() < RANGES["ruled_line_probability"][0])
    if ruled:
        through_digit = rng.random() < 0.5
        y = rng.uniform(box[1], box[3]) if through_digit else rng.uniform(0, height)
        line = _line_coverage(
            shape,
            (width / 2, y),
            math.radians(rng.uniform(-4, 4)),
            _uniform(rng, "ruled_line_width_px_at_500") * px,
        )
        darkness = 1 - _uniform(rng, "ruled_line_reflectance")
        hue = [1.0, 0.67, 0.11] if rng.random() < 0.6 else [1.0, 1.0, 1.0]  # blue or grey
        colour = 1 - darkness * np.array(hue, np.float32)
        reflect *= 1 - line[..., None] * (1 - colour)

    ink_level = _uniform(rng, "ink_reflectance")
    hue = INK_HUES[int(rng.integers(len(INK_HUES)))]
    ink_colour = hue / (hue @ LUMA) * ink_level  # gray level `ink_level`, whatever its hue
    reflect *= 1 - ink_cov[..., None] * (1 - np.clip(ink_colour, 0, 1))

    n_specks = int(rng.integers(RANGES["specks"][0], RANGES["specks"][1] + 1))
    dust = Image.new("F", (width, height), 0.0)
    draw = ImageDraw.Draw(dust)
    for _ in range(n_specks):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = _uniform(rng, "speck_radius_px_at_500") * px / 2
        draw.ellipse((x - r, y - r, x + r, y + r), fill=float(rng.uniform(0.3, 0.9)))
    reflect *= 1 - np.asarray(dust)[..., None]

    edge = bool(rng.random() < RANGES["edge_probability"][0])
    if edge:
        edge = _add_table(rng, reflect, box, shape, px)

    shade, light = _shading(rng, shape)
    exposure = _uniform(rng, "exposure")
    illuminant = 1 + rng.uniform(-0.1, 0.1, size=3).astype(np.float32) * np.array([1, 0.3, -1])
    seen = reflect * (shade * exposure)[..., None] * illuminant / illuminant.max()

    blur = _uniform(rng, "blur_radius_px")
    image = Image.fromarray((np.clip(seen, 0, 1) * 255).astype(np.uint8), mode="RGB")
    image = image.filter(ImageFilter.GaussianBlur(blur))
    noisy = np.asarray(image, np.float32) / 255
    noisy = noisy + _uniform(rng, "sensor_noise") * rng.standard_normal(noisy.shape)
    image = Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8), mode="RGB")

    paper = shade * exposure  # white paper's gray level before tint and texture
    style = Style(
        seed=seed,
        width=width,
        height=height,
        digit_box=box,
        tilt_deg=round(tilt, 2),
        ink_reflectance=round(ink_level, 3),
        light=light,
        darkest_paper=round(float(paper.min()), 3),
        faintest_ink_on_brightest_paper=round(float(paper.max()) * RANGES["ink_reflectance"][1], 3),
        specks=n_specks,
        ruled_line=ruled,
        edge=edge,
        blur_radius_px=round(blur, 2),
        jpeg_quality=int(rng.integers(*RANGES["jpeg_quality"])),
    )
    return image, style


def _add_table(
    rng: np.random.Generator,
    reflect: np.ndarray,
    box: tuple[int, int, int, int],
    shape: tuple[int, int],
    px: float,
) -> bool:
    """Cut the page along a slanted edge on the side with most room, the table beyond it."""
    h, w = shape
    gaps = {"left": box[0], "top": box[1], "right": w - box[2], "bottom": h - box[3]}
    side = max(gaps, key=gaps.get)
    span = w if side in ("left", "right") else h
    room = gaps[side] - 0.03 * span
    if room < 0.05 * span:
        return False
    depth = rng.uniform(0.3, 0.8) * min(room, 0.25 * span)
    angle = math.radians(rng.uniform(-8, 8))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    along = {"left": xs, "right": w - 1 - xs, "top": ys, "bottom": h - 1 - ys}[side]
    across = ys if side in ("left", "right") else xs
    boundary = depth + (across - (h if side in ("left", "right") else w) / 2) * math.tan(angle)
    table = np.clip(boundary - along + 0.5, 0, 1)[..., None]
    colour = rng.uniform(*RANGES["table_reflectance"]) * rng.uniform(0.7, 1.3, size=3)
    grain = 1 + 0.05 * rng.standard_normal(shape).astype(np.float32)[..., None]
    reflect[:] = reflect * (1 - table) + np.clip(colour * grain, 0, 1) * table
    return True


def photo_jpeg(digit: np.ndarray, seed: int) -> bytes:
    """`make_photo` as the JPEG a phone would upload, at the quality drawn for it."""
    image, style = make_photo(digit, seed)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=style.jpeg_quality)
    return buffer.getvalue()


def photo_set(images: np.ndarray, count: int, seed: int = 0) -> list[tuple[int, bytes]]:
    """`count` photos of the first `count` digits of `images`, photo i drawn with seed+i."""
    return [(i, photo_jpeg(images[i], seed + i)) for i in range(count)]
