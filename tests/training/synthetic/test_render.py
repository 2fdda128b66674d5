"""Clip sampling and rasterisation: in range, fully visible, moving as specified, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from training.synthetic.render import (
    DEFAULT_RANGES,
    ClipRanges,
    ClipSpec,
    check_clip_geometry,
    render_clip,
    sample_clip,
)
from training.synthetic.vocabulary import Background, Colour, Motion, Prompt, Shape


def coverage(frames: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Per-pixel fraction of the object colour, recovered from the blend of the two colours."""
    background = np.asarray(spec.prompt.background.rgb, dtype=np.float64)
    colour = np.asarray(spec.prompt.colour.rgb, dtype=np.float64)
    direction = colour - background
    return ((frames - background) @ direction) / (direction @ direction)


def test_sampled_clips_stay_in_range_and_inside_the_frame() -> None:
    rng = np.random.default_rng(0)
    side, frames = 64, 17
    for _ in range(2000):
        spec = sample_clip(rng, frames, side)
        assert DEFAULT_RANGES.min_size * side <= spec.size <= DEFAULT_RANGES.max_size * side
        if spec.prompt.motion is Motion.STILL:
            assert spec.travel == 0
        else:
            assert (
                DEFAULT_RANGES.min_travel * side <= spec.travel <= DEFAULT_RANGES.max_travel * side
            )
        margin = DEFAULT_RANGES.margin * side
        for t in (0, frames - 1):
            for c in spec.centre(t):
                assert -0.5 + margin - 1e-9 <= c - spec.size / 2
                assert c + spec.size / 2 <= side - 0.5 - margin + 1e-9


def test_every_attribute_value_is_sampled() -> None:
    rng = np.random.default_rng(1)
    prompts = [sample_clip(rng, 17, 64).prompt for _ in range(600)]
    assert {p.colour for p in prompts} == set(Colour)
    assert {p.shape for p in prompts} == set(Shape)
    assert {p.motion for p in prompts} == set(Motion)
    assert {p.background for p in prompts} == set(Background)


@pytest.mark.parametrize(
    ("shape", "fill"), [(Shape.SQUARE, 1.0), (Shape.CIRCLE, np.pi / 4), (Shape.TRIANGLE, 0.5)]
)
def test_rendered_area_and_motion_match_the_spec(shape: Shape, fill: float) -> None:
    prompt = Prompt(Colour.YELLOW, shape, Motion.RIGHT, Background.BLACK)
    spec = ClipSpec(prompt=prompt, frames=5, side=64, size=16.0, start=(20.0, 30.0), travel=20.0)
    frames = render_clip(spec).astype(np.float64)
    cover = coverage(frames, spec)
    xs = np.arange(64)[None, :]
    for t in range(spec.frames):
        # Anti-aliased coverage integrates to the shape's area (to rounding to 8 bits).
        assert cover[t].sum() == pytest.approx(fill * 16.0**2, rel=0.02)
        x_mean = (cover[t] * xs).sum() / cover[t].sum()
        assert x_mean == pytest.approx(spec.centre(t)[0], abs=0.05)


def test_border_stays_background_and_frames_are_deterministic() -> None:
    rng = np.random.default_rng(2)
    for _ in range(12):
        spec = sample_clip(rng, 17, 64)
        frames = render_clip(spec)
        border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], 1)
        assert (border == np.asarray(spec.prompt.background.rgb, np.uint8)).all()
        np.testing.assert_array_equal(render_clip(spec), frames)


def test_bad_geometry_and_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="got 63"):
        check_clip_geometry(17, 63)
    with pytest.raises(ValueError, match="got 1"):
        check_clip_geometry(1, 64)
    with pytest.raises(ValueError, match="≤ 1"):
        ClipRanges(max_size=0.5, max_travel=0.5)
