"""Object measurement on rendered frames: the shape moments land on their prototypes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.synthetic.render import ClipSpec, render_clip
from training.synthetic.tracking import analyse_frame
from training.synthetic.vocabulary import Background, Colour, Motion, Prompt, Shape


def frame_of(shape: Shape, colour: Colour = Colour.RED, size: float = 16.0) -> np.ndarray:
    prompt = Prompt(colour, shape, Motion.STILL, Background.GRAY)
    spec = ClipSpec(prompt=prompt, frames=2, side=64, size=size, start=(30.3, 25.6), travel=0.0)
    return render_clip(spec)[0]


@pytest.mark.parametrize(
    ("shape", "area", "skew", "ratio"),
    [
        (Shape.CIRCLE, math.pi / 4, 0.0, 1.0),
        (Shape.SQUARE, 1.0, 0.0, 4 / 3),
        (Shape.TRIANGLE, 0.5, -2 * math.sqrt(2) / 5, 0.98),
    ],
)
def test_measurements_match_the_geometry(
    shape: Shape, area: float, skew: float, ratio: float
) -> None:
    analysis = analyse_frame(frame_of(shape))
    obj = analysis.obj
    assert obj is not None
    assert analysis.background == (128.0, 128.0, 128.0)
    assert obj.colour == (255.0, 0.0, 0.0)
    assert obj.area == pytest.approx(area * 16.0**2, rel=0.02)
    assert obj.vertical_skew == pytest.approx(skew, abs=0.03)
    assert obj.diagonal_ratio == pytest.approx(ratio, abs=0.03)
    # The triangle's centroid sits a sixth of its height below its box centre. Tolerance: the
    # renderer's 4 × 4 supersampling places edges on a quarter-pixel grid.
    expected_y = 25.6 + (16.0 / 6 if shape is Shape.TRIANGLE else 0.0)
    assert obj.centroid == pytest.approx((30.3, expected_y), abs=0.125)
    assert not analysis.background_region[25, 30] and analysis.background_region[0, 0]


def test_speckles_are_ignored() -> None:
    frame = frame_of(Shape.SQUARE)
    clean = analyse_frame(frame).obj
    speckled = frame.copy()
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, 64, size=(40, 2)):
        if abs(x - 30) > 12 or abs(y - 26) > 12:
            speckled[y, x] = (255, 255, 0)
    noisy = analyse_frame(speckled).obj
    assert clean is not None and noisy is not None
    assert noisy.box == clean.box
    assert noisy.centroid == pytest.approx(clean.centroid, abs=1e-9)


def test_no_object_in_a_plain_frame_or_in_noise() -> None:
    plain = np.full((32, 32, 3), 200, dtype=np.uint8)
    assert analyse_frame(plain).obj is None
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert analyse_frame(noise).obj is None
    assert analyse_frame(noise).background_region.all()
