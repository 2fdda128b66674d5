"""How well a clip shows its prompt: six scores in [0, 1] and a prompt accuracy.

``score_clip(frames, prompt)`` parses the prompt (``Prompt.parse``: a ``ValueError`` names any
word outside the vocabulary), finds the object in every frame (``tracking.analyse_frame``) and
scores, for a clip of T frames of H × W:

- **colour**: mean over frames of P(prompted colour | c_t), with c_t the object's colour and
  P(k | c) = softmax_k(−‖c − rgb_k‖² / 2σ²) over the six object colours, σ = 40. Nearest palette
  colour correct ⇒ > 0.5 (palette colours are ≥ 255 apart); a frame without an object scores 0.
- **shape**: mean over frames of P(prompted shape | s_t, r_t), softmax over the three shapes of
  −(s − s_k)²/2σ_s² − (r − r_k)²/2σ_r² with s the vertical skewness and r the diagonal ratio of
  the object's coverage (``tracking``), prototypes (s_k, r_k): circle (0, 1), square (0, 4/3),
  triangle (−0.566, 0.98); σ_s = 0.1, σ_r = 0.06.
- **direction**: a least-squares line through the centroids of the frames with an object gives
  the displacement over the clip d = slope·(T − 1), normalised u = (d_x / W, d_y / H).
  P(moving) = sigmoid((‖u‖ − 0.125) / 0.02) (0.125 is half the generator's smallest travel) and
  P(direction k | moving) = softmax_k(8·cos θ_k) over left/right/up/down, θ_k the angle between u
  and direction k. Score = P(moving)·P(prompted direction | moving), or 1 − P(moving) for
  "still". The five probabilities sum to 1.
- **motion_amount** (the analogue of VBench's dynamic degree, graded against the prompt): for a
  moving prompt min(1, ‖u‖ / 0.25), the fraction of the generator's smallest travel achieved;
  for "still" 1 up to ‖u‖ = 0.05, falling linearly to 0 at 0.25.
- **temporal_consistency** (scene consistency): mean over consecutive frame pairs of the least of
  three terms, each 1 when stable and falling linearly to 0: relative area change
  |A_t − A_{t−1}| / max(A_t, A_{t−1}) (1 up to 0.1, 0 from 0.4), object colour change
  ‖c_t − c_{t−1}‖ (16 → 64) and background flicker, the mean ‖f_t(p) − f_{t−1}(p)‖ over the
  pixels of both frames' background regions (4 → 32). A pair missing the object scores 0.
- **background_cleanliness**: mean over frames and over each frame's background region (pixels
  outside the object's padded box; the whole frame if no object) of a per-pixel score on the
  distance to the *prompted* background colour: 1 up to 24, falling linearly to 0 at 80.
- **prompt_accuracy**: 1 if colour, shape, direction and background cleanliness all exceed 0.5
  (the clip shows the prompted colour, shape, motion and background), else 0.

Chance levels. A score that is a posterior over K choices averages to exactly 1/K over the K
prompts that differ only in that attribute, so a clip that ignores an attribute scores 1/K on it
against uniformly drawn prompts: colour 1/6, shape 1/3, direction 1/5, prompt accuracy
1/(6·3·5·3) = 1/270. Uniform noise has no object (the "object" covers more than half the frame)
and scores 0 on every dimension, at or below chance.

All ranges and σ were set against the generator: ground-truth clips after an MP4 round trip
score ≥ 0.98 on every dimension (``tests/training/synthetic/test_scorer.py``). Measured on 400
clips of 17 × 64 × 64 and 60 of 33 × 128 × 128 and 9 × 64 × 64: every clip ≥ 0.997 on every
dimension. Frames of 32 × 32 are below the scorer's resolution: their 6–10 px objects lose their
shape to chroma subsampling (shape 0.94, temporal consistency 0.97 on average).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np

from training.synthetic.render import DEFAULT_RANGES
from training.synthetic.tracking import FrameAnalysis, FrameObject, analyse_frame
from training.synthetic.vocabulary import Colour, Motion, Prompt, Shape

COLOUR_SIGMA = 40.0
SHAPE_PROTOTYPES: dict[Shape, tuple[float, float]] = {
    Shape.CIRCLE: (0.0, 1.0),
    Shape.SQUARE: (0.0, 4.0 / 3.0),
    Shape.TRIANGLE: (-2.0 * math.sqrt(2.0) / 5.0, 0.98),
}
SKEW_SIGMA = 0.1
RATIO_SIGMA = 0.06
MIN_TRAVEL = DEFAULT_RANGES.min_travel
MOVING_THRESHOLD = MIN_TRAVEL / 2
MOVING_WIDTH = 0.02
DIRECTION_KAPPA = 8.0
STILL_TOLERANCE = 0.05
AREA_CHANGE = (0.1, 0.4)
COLOUR_CHANGE = (16.0, 64.0)
BACKGROUND_FLICKER = (4.0, 32.0)
BACKGROUND_DISTANCE = (24.0, 80.0)
MOVING_DIRECTIONS = (Motion.LEFT, Motion.RIGHT, Motion.UP, Motion.DOWN)

_FrameScore = Callable[[FrameObject], float]


@dataclass(frozen=True)
class ClipScore:
    """The scores of one clip, each in [0, 1] (see the module docstring for their definitions)."""

    colour: float
    shape: float
    direction: float
    motion_amount: float
    temporal_consistency: float
    background_cleanliness: float
    prompt_accuracy: float

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field.name} must lie in [0, 1], got {value}")


SCORE_NAMES: tuple[str, ...] = tuple(field.name for field in fields(ClipScore))


@dataclass(frozen=True, eq=False)
class ClipAnalysis:
    """The prompt-independent part of scoring a clip: the object in every frame and the clip's
    temporal consistency. Scoring one clip against many prompts reuses it."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    frame_analyses: tuple[FrameAnalysis, ...]
    temporal_consistency: float


def analyse_clip(frames: np.ndarray) -> ClipAnalysis:
    """Find the object in every frame of an RGB clip uint8 [T, H, W, 3]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(
            f"frames must be uint8 [T ≥ 1, H, W, 3], got dtype {frames.dtype} shape {frames.shape}"
        )
    analyses = tuple(analyse_frame(frame) for frame in frames)
    return ClipAnalysis(
        frames=frames,
        frame_analyses=analyses,
        temporal_consistency=_temporal_consistency(frames, analyses),
    )


def score_clip(frames: np.ndarray | ClipAnalysis, prompt: str | Prompt) -> ClipScore:
    """Score one clip, RGB uint8 [T, H, W, 3] or its ``analyse_clip``, against its prompt."""
    analysis = frames if isinstance(frames, ClipAnalysis) else analyse_clip(frames)
    parsed = prompt if isinstance(prompt, Prompt) else Prompt.parse(prompt)
    objects = [a.obj for a in analysis.frame_analyses]
    colour = _mean_over_frames(objects, lambda o: _colour_probability(o, parsed.colour))
    shape = _mean_over_frames(objects, lambda o: _shape_probability(o, parsed.shape))
    _, height, width, _ = analysis.frames.shape
    u = _normalised_displacement(objects, height=height, width=width)
    direction = 0.0 if u is None else _direction_probability(u, parsed.motion)
    amount = 0.0 if u is None else _motion_amount(u, parsed.motion)
    cleanliness = _background_cleanliness(analysis, parsed)
    passed = min(colour, shape, direction, cleanliness) > 0.5
    return ClipScore(
        colour=colour,
        shape=shape,
        direction=direction,
        motion_amount=amount,
        temporal_consistency=analysis.temporal_consistency,
        background_cleanliness=cleanliness,
        prompt_accuracy=1.0 if passed else 0.0,
    )


def score_clips(
    clips: Iterable[tuple[np.ndarray | ClipAnalysis, str | Prompt]],
) -> dict[str, float]:
    """The mean of every score over (frames, prompt) pairs, keyed by ``SCORE_NAMES``."""
    scores = [astuple(score_clip(frames, prompt)) for frames, prompt in clips]
    if not scores:
        raise ValueError("score_clips needs at least one clip, got none")
    means = np.mean(np.asarray(scores, dtype=np.float64), axis=0)
    return {name: float(value) for name, value in zip(SCORE_NAMES, means, strict=True)}


def _mean_over_frames(objects: Sequence[FrameObject | None], score: _FrameScore) -> float:
    return float(np.mean([0.0 if o is None else score(o) for o in objects]))


def _softmax_at(logits: np.ndarray, index: int) -> float:
    shifted = np.exp(logits - logits.max())
    return float(shifted[index] / shifted.sum())


def _colour_probability(obj: FrameObject, colour: Colour) -> float:
    palette = list(Colour)
    measured = np.asarray(obj.colour)
    distances = np.array([np.sum((measured - np.asarray(c.rgb)) ** 2) for c in palette])
    return _softmax_at(-distances / (2 * COLOUR_SIGMA**2), palette.index(colour))


def _shape_probability(obj: FrameObject, shape: Shape) -> float:
    shapes = list(Shape)
    logits = np.array(
        [
            -((obj.vertical_skew - SHAPE_PROTOTYPES[s][0]) ** 2) / (2 * SKEW_SIGMA**2)
            - (obj.diagonal_ratio - SHAPE_PROTOTYPES[s][1]) ** 2 / (2 * RATIO_SIGMA**2)
            for s in shapes
        ]
    )
    return _softmax_at(logits, shapes.index(shape))


def _normalised_displacement(
    objects: Sequence[FrameObject | None], height: int, width: int
) -> np.ndarray | None:
    """u = (d_x / W, d_y / H) from a least-squares line through the centroids; None if fewer
    than two frames hold the object."""
    found = [(t, o.centroid) for t, o in enumerate(objects) if o is not None]
    if len(found) < 2:
        return None
    times = np.array([t for t, _ in found], dtype=np.float64)
    centroids = np.array([c for _, c in found], dtype=np.float64)
    centred = times - times.mean()
    slope = (centred @ (centroids - centroids.mean(axis=0))) / (centred @ centred)
    return slope * (len(objects) - 1) / np.array([width, height], dtype=np.float64)


def _direction_probability(u: np.ndarray, motion: Motion) -> float:
    magnitude = float(np.linalg.norm(u))
    p_moving = 1.0 / (1.0 + math.exp(-(magnitude - MOVING_THRESHOLD) / MOVING_WIDTH))
    if motion is Motion.STILL:
        return 1.0 - p_moving
    cosines = np.array(
        [float(u @ np.asarray(m.unit_vector)) / max(magnitude, 1e-12) for m in MOVING_DIRECTIONS]
    )
    return p_moving * _softmax_at(DIRECTION_KAPPA * cosines, MOVING_DIRECTIONS.index(motion))


def _motion_amount(u: np.ndarray, motion: Motion) -> float:
    magnitude = float(np.linalg.norm(u))
    if motion is Motion.STILL:
        return _ramp(magnitude, STILL_TOLERANCE, MIN_TRAVEL)
    return min(1.0, magnitude / MIN_TRAVEL)


def _temporal_consistency(frames: np.ndarray, analyses: Sequence[FrameAnalysis]) -> float:
    if len(analyses) == 1:
        return 1.0 if analyses[0].obj is not None else 0.0
    pair_scores = []
    for t in range(1, len(analyses)):
        before, after = analyses[t - 1].obj, analyses[t].obj
        if before is None or after is None:
            pair_scores.append(0.0)
            continue
        area_change = abs(after.area - before.area) / max(after.area, before.area)
        colour_change = float(np.linalg.norm(np.subtract(after.colour, before.colour)))
        region = analyses[t - 1].background_region & analyses[t].background_region
        change = np.linalg.norm(frames[t].astype(np.float64) - frames[t - 1], axis=-1)
        flicker = float(change[region].mean()) if region.any() else math.inf
        pair_scores.append(
            min(
                _ramp(area_change, *AREA_CHANGE),
                _ramp(colour_change, *COLOUR_CHANGE),
                _ramp(flicker, *BACKGROUND_FLICKER),
            )
        )
    return float(np.mean(pair_scores))


def _background_cleanliness(clip: ClipAnalysis, prompt: Prompt) -> float:
    target = np.asarray(prompt.background.rgb, dtype=np.float64)
    per_frame = []
    for frame, analysis in zip(clip.frames, clip.frame_analyses, strict=True):
        region = analysis.background_region
        if not region.any():
            per_frame.append(0.0)
            continue
        distance = np.linalg.norm(frame[region].astype(np.float64) - target, axis=-1)
        good, bad = BACKGROUND_DISTANCE
        per_frame.append(float(np.clip((bad - distance) / (bad - good), 0.0, 1.0).mean()))
    return float(np.mean(per_frame))


def _ramp(value: float, good: float, bad: float) -> float:
    """1 for value ≤ good, 0 for value ≥ bad, linear in between."""
    return float(np.clip((bad - value) / (bad - good), 0.0, 1.0))
