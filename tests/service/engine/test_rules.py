from __future__ import annotations

import dataclasses

import pytest

from qvgen.family import ModelFamily
from service.engine.rules import (
    MAX_SEED,
    ModelGeometry,
    ModelLimits,
    check_request,
    default_limits,
)
from service.engine.types import GenerationRequest, InvalidRequest

GEOMETRY = ModelGeometry(size_multiple=16, frame_step=4, text_tokens=16)
LIMITS = ModelLimits(max_width=64, max_height=48, max_frames=17, max_steps=10, max_prompt_chars=40)
GOOD = GenerationRequest(
    prompt="a cat", width=64, height=48, num_frames=17, num_inference_steps=10, guidance_scale=5.0
)


def test_a_request_at_every_cap_passes() -> None:
    check_request(GOOD, GEOMETRY, LIMITS)
    check_request(
        dataclasses.replace(
            GOOD, width=16, height=16, num_frames=1, guidance_scale=1.0, seed=MAX_SEED
        ),
        GEOMETRY,
        LIMITS,
    )


@pytest.mark.parametrize(
    ("field", "value", "quoted"),
    [
        ("prompt", "   ", "must not be empty"),
        ("prompt", "x" * 41, "41 characters, more than the limit of 40"),
        ("negative_prompt", "x" * 41, "limit of 40"),
        ("width", 24, "24 is not allowed; use a multiple of 16 in [16, 64]"),
        ("width", 80, "80 is not allowed; use a multiple of 16 in [16, 64]"),
        ("width", 0, "[16, 64]"),
        ("height", 64, "64 is not allowed; use a multiple of 16 in [16, 48]"),
        ("height", 16.0, "16.0 is not an integer"),
        ("num_frames", 8, "8 is not allowed; use 1 + 4·k in [1, 17] (e.g. 5, 9)"),
        ("num_frames", 21, "[1, 17]"),
        ("num_frames", True, "True is not an integer"),
        ("num_inference_steps", 0, "0 is out of range [1, 10]"),
        ("num_inference_steps", 11, "11 is out of range [1, 10]"),
        ("guidance_scale", 0.5, "0.5 is out of range [1.0, 20.0]"),
        ("guidance_scale", float("nan"), "nan is out of range"),
        ("guidance_scale", "5", "'5' is not a number"),
        ("seed", -1, "-1 is out of range [0, "),
        ("seed", MAX_SEED + 1, "is out of range"),
        ("fps", 0, "0 is out of range [1, 60]"),
    ],
)
def test_each_bad_field_is_named_with_its_allowed_range(
    field: str, value: object, quoted: str
) -> None:
    bad = dataclasses.replace(GOOD, **{field: value})
    with pytest.raises(InvalidRequest) as caught:
        check_request(bad, GEOMETRY, LIMITS)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(f"{field}: ")
    assert quoted in str(caught.value)


def test_families_have_defaults_at_their_training_sizes() -> None:
    assert default_limits(ModelFamily.WAN).max_frames == 81
    assert default_limits(ModelFamily.COGVIDEOX).max_width == 1360


@pytest.mark.parametrize(
    "changes",
    [{"max_width": 0}, {"min_guidance": 5.0, "max_guidance": 2.0}, {"min_fps": 0}],
)
def test_inconsistent_limits_are_refused(changes: dict[str, float]) -> None:
    base = {"max_width": 64, "max_height": 64, "max_frames": 17}
    with pytest.raises(ValueError, match="ModelLimits"):
        ModelLimits(**{**base, **changes})  # type: ignore[arg-type]
