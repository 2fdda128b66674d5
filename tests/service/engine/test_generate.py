from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from torch import nn

from qvgen.family import ModelFamily
from service.engine.diffusers_engine import DiffusersEngine
from service.engine.types import GenerationCancelled, GenerationRequest, InvalidRequest

REQUEST = GenerationRequest(
    prompt="a red cat runs on the beach",
    negative_prompt="blurry low quality",
    width=16,
    height=16,
    num_frames=9,
    num_inference_steps=3,
    guidance_scale=5.0,
    seed=7,
    fps=8,
)


@pytest.fixture(scope="module", params=["tiny_wan_dir", "tiny_cogvideox_dir"])
def engine(request: pytest.FixtureRequest) -> DiffusersEngine:
    return DiffusersEngine.from_pretrained(request.getfixturevalue(request.param))


class CallCounter:
    """Counts forward calls of a module while installed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *_args: object) -> None:
        self.calls += 1


@pytest.fixture
def transformer_calls(engine: DiffusersEngine) -> Iterator[CallCounter]:
    counter = CallCounter()
    transformer: nn.Module = engine.pipeline.transformer
    handle = transformer.register_forward_pre_hook(counter)
    yield counter
    handle.remove()


def _calls_per_step(engine: DiffusersEngine) -> int:
    # Wan runs the conditional and unconditional passes separately; CogVideoX batches them.
    return 2 if engine.family is ModelFamily.WAN else 1


def test_generation_gives_uint8_frames_of_the_requested_shape(engine: DiffusersEngine) -> None:
    video = engine.generate(REQUEST)
    assert video.frames.shape == (9, 16, 16, 3)
    assert video.frames.dtype == np.uint8
    assert video.frames.std() > 0
    assert video.fps == REQUEST.fps
    assert video.stats.steps == REQUEST.num_inference_steps
    assert video.stats.peak_vram_bytes == 0
    assert 0 < video.stats.seconds_per_step * video.stats.steps <= video.stats.total_seconds
    assert set(video.extras) == {"encode_seconds", "decode_seconds"}


def test_same_seed_same_frames_other_seed_other_frames(engine: DiffusersEngine) -> None:
    first = engine.generate(REQUEST).frames
    assert np.array_equal(first, engine.generate(REQUEST).frames)
    assert not np.array_equal(first, engine.generate(dataclasses.replace(REQUEST, seed=8)).frames)


def test_other_sizes_and_no_guidance(engine: DiffusersEngine) -> None:
    request = dataclasses.replace(
        REQUEST, width=32, height=16, num_frames=17, num_inference_steps=1, guidance_scale=1.0
    )
    assert engine.generate(request).frames.shape == (17, 16, 32, 3)


def test_on_step_is_called_once_per_step_in_order(
    engine: DiffusersEngine, transformer_calls: CallCounter
) -> None:
    steps: list[tuple[int, int, int]] = []
    engine.generate(REQUEST, on_step=lambda i, n: steps.append((i, n, transformer_calls.calls)))
    per_step = _calls_per_step(engine)
    assert steps == [(i, 3, i * per_step) for i in (1, 2, 3)]


def test_cancel_after_step_one_stops_before_step_two(
    engine: DiffusersEngine, transformer_calls: CallCounter
) -> None:
    steps: list[int] = []
    with pytest.raises(GenerationCancelled) as caught:
        engine.generate(
            REQUEST, on_step=lambda i, _n: steps.append(i), should_cancel=lambda: len(steps) >= 1
        )
    assert caught.value.steps_done == 1
    assert steps == [1]
    assert transformer_calls.calls == _calls_per_step(engine)


def test_cancel_before_start_runs_nothing(
    engine: DiffusersEngine, transformer_calls: CallCounter
) -> None:
    with pytest.raises(GenerationCancelled) as caught:
        engine.generate(REQUEST, should_cancel=lambda: True)
    assert caught.value.steps_done == 0
    assert transformer_calls.calls == 0


def test_the_engine_still_generates_after_a_cancel(engine: DiffusersEngine) -> None:
    expected = engine.generate(REQUEST).frames
    with pytest.raises(GenerationCancelled):
        engine.generate(REQUEST, should_cancel=lambda: True)
    assert np.array_equal(engine.generate(REQUEST).frames, expected)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("width", 20),
        ("height", 4096),
        ("num_frames", 10),
        ("num_inference_steps", 0),
        ("guidance_scale", 25.0),
        ("seed", -1),
    ],
)
def test_bad_requests_raise_before_any_work(
    engine: DiffusersEngine, transformer_calls: CallCounter, field: str, value: object
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(dataclasses.replace(REQUEST, **{field: value}))
    assert caught.value.field == field
    assert repr(value) in str(caught.value) or str(value) in str(caught.value)
    assert transformer_calls.calls == 0


def test_frame_rule_follows_the_family(engine: DiffusersEngine) -> None:
    # 13 = 4·3 + 1 suits Wan's VAE; CogVideoX would decode 13 frames to 16.
    request = dataclasses.replace(REQUEST, num_frames=13, num_inference_steps=1)
    if engine.family is ModelFamily.WAN:
        assert engine.generate(request).frames.shape[0] == 13
    else:
        with pytest.raises(InvalidRequest, match=r"1 \+ 8·k"):
            engine.check(request)
