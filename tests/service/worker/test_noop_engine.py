"""The no-op engine: deterministic frames, every step reported, cancellation honoured."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.engine.caching.offer import THRESHOLDS
from service.engine.rules import CachingRules
from service.engine.types import (
    CachePolicy,
    GenerationCancelled,
    GenerationRequest,
    InvalidRequest,
)
from service.worker.noop_engine import NOOP_RULES, NoopEngine

REQUEST = GenerationRequest(prompt="p", width=8, height=4, num_frames=3, num_inference_steps=5)


def test_frames_encode_seed_and_frame_index() -> None:
    video = NoopEngine("m").generate(GenerationRequest(**{**REQUEST.__dict__, "seed": 7}))
    assert video.frames.shape == (3, 4, 8, 3) and video.frames.dtype == np.uint8
    assert video.frames[:, 0, 0, 0].tolist() == [7, 23, 39]
    assert video.frames[0, :, 0, 1].tolist() == [0, 63, 127, 191]
    again = NoopEngine("m").generate(GenerationRequest(**{**REQUEST.__dict__, "seed": 7}))
    assert np.array_equal(video.frames, again.frames)


def test_every_step_is_reported_and_cancel_stops_before_the_next() -> None:
    steps: list[tuple[int, int]] = []
    with pytest.raises(GenerationCancelled) as stopped:
        NoopEngine("m").generate(
            REQUEST, lambda done, total: steps.append((done, total)), lambda: len(steps) >= 2
        )
    assert steps == [(1, 5), (2, 5)] and stopped.value.steps_done == 2


def test_check_names_the_field_and_quotes_the_range() -> None:
    with pytest.raises(
        InvalidRequest, match=r"width: 7 is not allowed; use a multiple of 2 in \[2, 512\]"
    ) as caught:
        NoopEngine("m").check(GenerationRequest(prompt="p", width=7))
    assert caught.value.field == "width"


def test_stats_count_the_passes_of_a_plain_run() -> None:
    guided = NoopEngine("m").generate(REQUEST).stats  # guidance 5.0: two passes a step
    assert (guided.transformer_passes, guided.transformer_passes_saved) == (10, 0)
    unguided = NoopEngine("m").generate(dataclasses.replace(REQUEST, guidance_scale=1.0)).stats
    assert (unguided.transformer_passes, unguided.transformer_passes_saved) == (5, 0)


def test_it_offers_no_cache_policy_unless_its_rules_do() -> None:
    cached = dataclasses.replace(REQUEST, cache=CachePolicy.FIRST_BLOCK)
    with pytest.raises(InvalidRequest, match="not offered by this model; use none") as caught:
        NoopEngine("m").check(cached)
    assert caught.value.field == "cache"
    offering = dataclasses.replace(
        NOOP_RULES,
        caching=CachingRules(
            thresholds={CachePolicy.FIRST_BLOCK: THRESHOLDS[CachePolicy.FIRST_BLOCK]}
        ),
    )
    NoopEngine("m", rules=offering).check(cached)
