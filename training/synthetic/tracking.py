"""Finding the object of a synthetic clip in one frame, and measuring it.

For a frame with pixels f(p) ∈ [0, 255]³ (float), p = (x, y), x right, y down:

1. background estimate b = per-channel median of all pixels. A clip's object covers at most
   0.3² ≈ 9 % of the frame, so the median is a background pixel; estimating b (rather than
   taking the prompt's background) keeps the object measurable when a model paints the wrong
   background — that error is scored separately, by background cleanliness.
2. raw mask: ‖f(p) − b‖₂ > ``OBJECT_DISTANCE`` (80; every object colour lies ≥ 220 from every
   background colour, so anti-aliased edge pixels count once ≳ 35 % covered).
3. speckle removal: mask = raw ∧ dilate²(erode(raw)) with a 3×3 square: isolated pixels and
   lines thinner than 3 px go, the rim of a solid object stays.
4. the object is found if ``MIN_OBJECT_PIXELS`` ≤ |mask| ≤ ``MAX_OBJECT_FRACTION``·H·W; a larger
   "object" is noise or a wrong background, not a shape.

Measurements of a found object:

- colour c = per-channel median over erode(mask) (the interior, away from edge pixels blended
  with the background and from chroma subsampling; the mask itself if the erosion is empty);
- coverage w(p) = clip(⟨f(p) − b, c − b⟩ / ‖c − b‖², 0, 1) on dilate²(mask), 0 elsewhere: the
  fraction of the pixel the object covers, which undoes the renderer's anti-aliasing blend
  (f = (1 − w)·b + w·c) and so measures the shape to sub-pixel accuracy;
- area A = Σ w, centroid (x̄, ȳ) = Σ w·p / A, and with X = x − x̄, Y = y − ȳ, E[·] = Σ w·(·)/A:
  - vertical skewness E[Y³] / E[Y²]^{3/2}: −2√2/5 ≈ −0.566 for the upward triangle (its mass
    sits low), 0 for the circle and the square;
  - diagonal ratio E[U⁴ + V⁴] / E[X⁴ + Y⁴] with U, V = (X ± Y)/√2, the fourth moments along
    the diagonals over those along the axes: 1 for the disc (rotation invariant), 4/3 for the
    axis-aligned square (its corners reach out along the diagonals), 0.98 for the triangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECT_DISTANCE = 80.0
MIN_OBJECT_PIXELS = 6
MAX_OBJECT_FRACTION = 0.5
# Pixels within this distance of the object's box still carry its blur and compression ringing.
BOX_PAD = 2

RGBFloat = tuple[float, float, float]


@dataclass(frozen=True)
class FrameObject:
    """The object found in one frame (see the module docstring for each quantity)."""

    area: float
    centroid: tuple[float, float]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the mask, inclusive
    colour: RGBFloat
    vertical_skew: float
    diagonal_ratio: float


@dataclass(frozen=True)
class FrameAnalysis:
    """One frame: its estimated background colour, the object (None if not found), and the
    background region: every pixel outside the object's box grown by ``BOX_PAD``."""

    background: RGBFloat
    obj: FrameObject | None
    background_region: np.ndarray  # bool [H, W]


def analyse_frame(frame: np.ndarray) -> FrameAnalysis:
    """Find and measure the object of one RGB frame uint8 [H, W, 3]."""
    pixels = frame.astype(np.float64)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    raw = np.linalg.norm(pixels - background, axis=-1) > OBJECT_DISTANCE
    mask = raw & _dilate(_dilate(_erode(raw)))
    area = int(mask.sum())
    height, width = mask.shape
    region = np.ones_like(mask)
    if not MIN_OBJECT_PIXELS <= area <= MAX_OBJECT_FRACTION * height * width:
        return FrameAnalysis(background=_rgb(background), obj=None, background_region=region)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    region[
        max(box[1] - BOX_PAD, 0) : box[3] + BOX_PAD + 1,
        max(box[0] - BOX_PAD, 0) : box[2] + BOX_PAD + 1,
    ] = False
    interior = _erode(mask)
    colour = np.median(pixels[interior] if interior.any() else pixels[mask], axis=0)
    weights = _coverage(pixels, background, colour, mask)
    obj = _measure(weights, box, _rgb(colour))
    return FrameAnalysis(background=_rgb(background), obj=obj, background_region=region)


def _coverage(
    pixels: np.ndarray, background: np.ndarray, colour: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """w(p): the blend fraction of ``colour`` over ``background``, on dilate²(mask)."""
    direction = colour - background
    contrast = float(direction @ direction)
    support = _dilate(_dilate(mask))
    if contrast < OBJECT_DISTANCE**2 / 4:
        # A mottled object whose median is near the background: no reliable blend direction,
        # so the mask itself is the best coverage estimate.
        return mask.astype(np.float64)
    weights = np.clip(((pixels - background) @ direction) / contrast, 0.0, 1.0)
    return np.where(support, weights, 0.0)


def _measure(weights: np.ndarray, box: tuple[int, int, int, int], colour: RGBFloat) -> FrameObject:
    """Area, centroid and the two shape moments of the coverage map."""
    area = float(weights.sum())
    ys, xs = np.mgrid[: weights.shape[0], : weights.shape[1]].astype(np.float64)
    cx, cy = float((weights * xs).sum() / area), float((weights * ys).sum() / area)
    x, y = xs - cx, ys - cy
    var_y = float((weights * y**2).sum() / area)
    skew = float((weights * y**3).sum() / area) / max(var_y, 1e-12) ** 1.5
    u, v = (x + y) / np.sqrt(2), (x - y) / np.sqrt(2)
    axis_fourth = float((weights * (x**4 + y**4)).sum())
    diagonal_fourth = float((weights * (u**4 + v**4)).sum())
    return FrameObject(
        area=area,
        centroid=(cx, cy),
        box=box,
        colour=colour,
        vertical_skew=skew,
        diagonal_ratio=diagonal_fourth / max(axis_fourth, 1e-12),
    )


def _rgb(values: np.ndarray) -> RGBFloat:
    return (float(values[0]), float(values[1]), float(values[2]))


def _neighbourhood(mask: np.ndarray) -> list[np.ndarray]:
    """The 9 shifts of ``mask`` by −1, 0, +1 in each axis, padded with False."""
    padded = np.pad(mask, 1, constant_values=False)
    height, width = mask.shape
    return [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]


def _erode(mask: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce(_neighbourhood(mask))


def _dilate(mask: np.ndarray) -> np.ndarray:
    return np.logical_or.reduce(_neighbourhood(mask))
