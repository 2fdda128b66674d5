"""Clip geometry: sampling a random clip for a seed, and rasterising it with numpy.

A clip is one filled shape of side ``size`` whose centre moves on a straight line at constant
speed over a plain background::

    centre(t) = start + travel · u · t / (T − 1),     t = 0 … T − 1

with u the motion's unit vector (zero for ``still``) and ``travel`` the distance covered over
the whole clip. Ranges, as fractions of the frame side L (``ClipRanges``):

- size ∈ [0.20, 0.30]·L (13–19 px at 64×64): large enough to read the shape, small enough to
  leave room to move;
- travel ∈ [0.25, 0.45]·L (16–29 px, i.e. 1.0–1.8 px per frame at 17 frames): at least a
  quarter of the frame, so that a moving object is never mistaken for a still one;
- start: uniform over every position that keeps the whole shape at least 0.03·L inside the
  frame at every frame (so the object is always fully visible).

Rendering is anti-aliased by supersampling: each pixel's coverage c ∈ [0, 1] is the fraction of
an s × s grid of sample points (s = 4) inside the shape, and the pixel is
round((1 − c)·background + c·colour). Everything is float64 numpy on fixed inputs, so the frames
are a pure function of the clip spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from training.synthetic.vocabulary import Background, Colour, Motion, Prompt, Shape

SUPERSAMPLING = 4
MIN_FRAME_SIDE = 16
MIN_FRAMES = 2
_T = TypeVar("_T")


@dataclass(frozen=True)
class ClipRanges:
    """Sampling ranges as fractions of the frame side (see the module docstring)."""

    min_size: float = 0.20
    max_size: float = 0.30
    min_travel: float = 0.25
    max_travel: float = 0.45
    margin: float = 0.03

    def __post_init__(self) -> None:
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"need 0 < min_size ≤ max_size, got {self.min_size}, {self.max_size}")
        if not 0 < self.min_travel <= self.max_travel:
            raise ValueError(
                f"need 0 < min_travel ≤ max_travel, got {self.min_travel}, {self.max_travel}"
            )
        room = self.max_size + self.max_travel + 2 * self.margin
        if room > 1:
            raise ValueError(
                f"max_size + max_travel + 2·margin must be ≤ 1 so every clip fits, got {room:.3f}"
            )


DEFAULT_RANGES = ClipRanges()


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a clip's frames; lengths in pixels, positions are centres.

    ``start`` is the (x, y) centre of the shape's bounding box at frame 0 (pixel centres sit at
    integer coordinates, so the frame spans [−0.5, side − 0.5]); ``travel`` the distance the
    centre covers from frame 0 to frame T − 1 (0 for ``still``).
    """

    prompt: Prompt
    frames: int
    side: int
    size: float
    start: tuple[float, float]
    travel: float

    def centre(self, t: int) -> tuple[float, float]:
        dx, dy = self.prompt.motion.unit_vector
        fraction = t / (self.frames - 1)
        return (
            self.start[0] + dx * self.travel * fraction,
            self.start[1] + dy * self.travel * fraction,
        )


def check_clip_geometry(frames: int, side: int) -> None:
    """Raise ``ValueError`` unless the clip length and (even) frame side are usable."""
    if frames < MIN_FRAMES:
        raise ValueError(f"frames must be ≥ {MIN_FRAMES} (motion needs two), got {frames}")
    if side < MIN_FRAME_SIDE or side % 2:
        raise ValueError(
            f"the frame side must be even and ≥ {MIN_FRAME_SIDE} (H.264 yuv420p), got {side}"
        )


def sample_clip(
    rng: np.random.Generator, frames: int, side: int, ranges: ClipRanges = DEFAULT_RANGES
) -> ClipSpec:
    """Draw attributes uniformly from the vocabulary, then size, travel and start."""
    check_clip_geometry(frames, side)
    prompt = Prompt(
        colour=_choice(rng, list(Colour)),
        shape=_choice(rng, list(Shape)),
        motion=_choice(rng, list(Motion)),
        background=_choice(rng, list(Background)),
    )
    size = rng.uniform(ranges.min_size, ranges.max_size) * side
    travel = 0.0
    if prompt.motion is not Motion.STILL:
        travel = rng.uniform(ranges.min_travel, ranges.max_travel) * side
    # The centre's allowed interval on each axis keeps the shape `margin` inside the frame.
    low = ranges.margin * side - 0.5 + size / 2
    high = side - 0.5 - ranges.margin * side - size / 2
    dx, dy = prompt.motion.unit_vector
    start_x = _start_on_axis(rng, low, high, travel * dx)
    start_y = _start_on_axis(rng, low, high, travel * dy)
    return ClipSpec(
        prompt=prompt, frames=frames, side=side, size=size, start=(start_x, start_y), travel=travel
    )


def _choice(rng: np.random.Generator, members: Sequence[_T]) -> _T:
    return members[int(rng.integers(len(members)))]


def _start_on_axis(rng: np.random.Generator, low: float, high: float, shift: float) -> float:
    """A start coordinate s with s and s + shift both in [low, high]."""
    return float(rng.uniform(max(low, low - shift), min(high, high - shift)))


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Rasterise the clip: uint8 [T, side, side, 3] RGB."""
    offsets = (np.arange(SUPERSAMPLING) + 0.5) / SUPERSAMPLING - 0.5
    # Sample points of every pixel: pixel (i, j) covers [j − 0.5, j + 0.5] × [i − 0.5, i + 0.5].
    axis = (np.arange(spec.side)[:, None] + offsets[None, :]).reshape(-1)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    background = np.asarray(spec.prompt.background.rgb, dtype=np.float64)
    colour = np.asarray(spec.prompt.colour.rgb, dtype=np.float64)
    frames = np.empty((spec.frames, spec.side, spec.side, 3), dtype=np.uint8)
    for t in range(spec.frames):
        inside = _inside(spec.prompt.shape, xs, ys, spec.centre(t), spec.size)
        coverage = inside.reshape(spec.side, SUPERSAMPLING, spec.side, SUPERSAMPLING).mean(
            axis=(1, 3)
        )
        pixels = (1 - coverage[..., None]) * background + coverage[..., None] * colour
        frames[t] = np.rint(pixels).astype(np.uint8)
    return frames


def _inside(
    shape: Shape, xs: np.ndarray, ys: np.ndarray, centre: tuple[float, float], size: float
) -> np.ndarray:
    """Boolean mask of the sample points inside the shape (bounding box side ``size``)."""
    dx, dy = xs - centre[0], ys - centre[1]
    half = size / 2
    if shape is Shape.CIRCLE:
        return dx * dx + dy * dy <= half * half
    if shape is Shape.SQUARE:
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Triangle pointing up: apex at (0, −half), base from (−half, half) to (half, half); the
    # half-width grows linearly from 0 at the apex to `half` at the base.
    return (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
