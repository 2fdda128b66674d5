"""The scorer's validation: ground truth after an MP4 round trip scores ≥ 0.98 on every
dimension; noise and wrong prompts score at or below chance."""

from __future__ import annotations

import dataclasses
from enum import Enum

import numpy as np
import pytest

from qvgen.video_io import read_video
from training.synthetic.dataset import read_metadata, write_dataset
from training.synthetic.scorer import (
    SCORE_NAMES,
    ClipAnalysis,
    ClipScore,
    analyse_clip,
    score_clip,
    score_clips,
)
from training.synthetic.vocabulary import Background, Colour, Motion, Prompt, Shape

GROUND_TRUTH_CLIPS = 24
ATTRIBUTES: dict[str, type[Enum]] = {
    "colour": Colour,
    "shape": Shape,
    "motion": Motion,
    "background": Background,
}
# The score that judges each attribute; a posterior over the attribute's values.
JUDGED_BY = {
    "colour": "colour",
    "shape": "shape",
    "motion": "direction",
    "background": "background_cleanliness",
}


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, Prompt]]:
    """Ground-truth clips written by the generator as MP4s and decoded back."""
    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(out, count=GROUND_TRUTH_CLIPS, seed=2024)
    return [(read_video(out / r.video)[0], r.spec.prompt) for r in read_metadata(out)]


@pytest.fixture(scope="module")
def analysed(decoded: list[tuple[np.ndarray, Prompt]]) -> list[tuple[ClipAnalysis, Prompt]]:
    return [(analyse_clip(frames), prompt) for frames, prompt in decoded[:8]]


def test_ground_truth_scores_at_least_0_98_on_every_dimension(
    decoded: list[tuple[np.ndarray, Prompt]],
) -> None:
    assert {p.motion for _, p in decoded} == set(Motion)
    means = score_clips((frames, prompt.text) for frames, prompt in decoded)
    assert set(means) == set(SCORE_NAMES)
    low = {name: value for name, value in means.items() if value < 0.98}
    assert not low, f"ground truth below 0.98: {low}"


def test_noise_scores_at_or_below_chance() -> None:
    rng = np.random.default_rng(5)
    prompts = [
        Prompt(colour, shape, motion, background)
        for colour, shape, motion, background in zip(
            list(Colour) * 2, list(Shape) * 4, list(Motion) * 3, list(Background) * 4, strict=False
        )
    ]
    clips = [(rng.integers(0, 256, (17, 64, 64, 3), dtype=np.uint8), p) for p in prompts]
    means = score_clips(clips)
    chance = {"colour": 1 / 6, "shape": 1 / 3, "direction": 1 / 5, "prompt_accuracy": 1 / 270}
    for name, level in chance.items():
        assert means[name] <= level, (name, means[name])
    # Not posteriors, but a noise clip shows no motion, no stable scene and no clean background.
    for name in ("motion_amount", "temporal_consistency", "background_cleanliness"):
        assert means[name] < 0.1, (name, means[name])


@pytest.mark.parametrize("attribute", list(ATTRIBUTES))
def test_wrong_prompts_score_zero_and_all_prompts_average_to_chance(
    analysed: list[tuple[ClipAnalysis, Prompt]], attribute: str
) -> None:
    """Scored against every value of one attribute (the others true), a clip's judging score
    averages 1/K — the chance level of a uniformly random prompt — because the right value
    scores ≈ 1 and the K − 1 wrong ones ≈ 0."""
    values = list(ATTRIBUTES[attribute])
    name = JUDGED_BY[attribute]
    right, wrong = [], []
    for analysis, prompt in analysed:
        for value in values:
            score = getattr(
                score_clip(analysis, dataclasses.replace(prompt, **{attribute: value})), name
            )
            (right if value == getattr(prompt, attribute) else wrong).append(score)
    assert min(right) > 0.98
    assert max(wrong) < 0.02
    assert np.mean(right + wrong) == pytest.approx(1 / len(values), abs=0.01)


def test_a_frozen_clip_fails_a_moving_prompt(decoded: list[tuple[np.ndarray, Prompt]]) -> None:
    frames, prompt = next((f, p) for f, p in decoded if p.motion is Motion.LEFT)
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    score = score_clip(frozen, prompt)
    assert score.direction < 0.01 and score.motion_amount < 0.05
    assert score.prompt_accuracy == 0.0
    still = score_clip(frozen, dataclasses.replace(prompt, motion=Motion.STILL))
    assert still.direction > 0.99 and still.motion_amount == 1.0


def test_a_vanishing_object_breaks_temporal_consistency(
    decoded: list[tuple[np.ndarray, Prompt]],
) -> None:
    frames, prompt = decoded[0]
    blank = np.asarray(prompt.background.rgb, dtype=np.uint8)
    blinking = frames.copy()
    blinking[1::2] = blank
    score = score_clip(blinking, prompt)
    assert score.temporal_consistency == 0.0
    assert score.colour == pytest.approx(9 / 17, abs=0.01)


def test_a_flickering_background_breaks_temporal_consistency(
    decoded: list[tuple[np.ndarray, Prompt]],
) -> None:
    frames, prompt = next((f, p) for f, p in decoded if p.background is Background.GRAY)
    flicker = frames.astype(np.int16)
    flicker[1::2] += 30
    score = score_clip(np.clip(flicker, 0, 255).astype(np.uint8), prompt)
    assert score.temporal_consistency < 0.5
    assert score.colour > 0.98 and score.shape > 0.98


def test_unknown_word_and_bad_frames_are_refused() -> None:
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown word 'hexagon'"):
        score_clip(frames, "a red hexagon moving left on a black background")
    with pytest.raises(ValueError, match="uint8"):
        score_clip(frames.astype(np.float32), "a red circle moving left on a black background")
    with pytest.raises(ValueError, match="at least one clip"):
        score_clips([])
    with pytest.raises(ValueError, match=r"got 1\.5"):
        ClipScore(1.5, 0, 0, 0, 0, 0, 0)
