"""A W4A4 packed pipeline generates what its fake-quantized source model generates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qvgen.timestep_groups import timestep_to_group
from service.engine.diffusers_engine import DiffusersEngine
from service.engine.types import GenerationRequest
from service.kernels.lowbit_linear import LowBitLinear
from tests.service.engine.packed_pipelines import (
    SCHEME,
    export_packed_pipeline,
    fake_quantized_engine,
)
from training.quant.quant_linear import QuantLinear

REQUEST = GenerationRequest(
    prompt="a blue bird flies over the sea",
    negative_prompt="static",
    width=16,
    height=16,
    num_frames=9,
    num_inference_steps=3,
    guidance_scale=4.0,
    seed=11,
)
# The fake-quant forward multiplies dequantized floats, the reference kernel sums integer codes
# and rescales: the same function up to float32 rounding (relative 1e-5 per layer,
# tests/training/quant/test_export_parity.py), which can also move an activation across a
# rounding boundary of its 4-bit grid. Noise predictions along the whole trajectory must stay
# within 1e-5 relative (observed: 2e-7 to 4e-7 on CPU); decoded frames within one uint8 level
# (observed: identical).
MAX_RELATIVE_PREDICTION_ERROR = 1e-5
MAX_LEVEL_DIFFERENCE = 1


@dataclasses.dataclass(frozen=True)
class QuantizedPair:
    fake_quant: DiffusersEngine
    packed: DiffusersEngine
    plain: DiffusersEngine


@pytest.fixture(scope="module", params=["tiny_wan_dir", "tiny_cogvideox_dir"])
def engines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> QuantizedPair:
    source: Path = request.getfixturevalue(request.param)
    fake_quant = fake_quantized_engine(source)
    packed_dir = export_packed_pipeline(
        source, fake_quant, tmp_path_factory.mktemp("packed") / "pipeline"
    )
    return QuantizedPair(
        fake_quant=fake_quant,
        packed=DiffusersEngine.from_pretrained(packed_dir),
        plain=DiffusersEngine.from_pretrained(source),
    )


def test_packed_directory_loads_w4a4_layers(engines: QuantizedPair) -> None:
    fake = [
        m.name
        for m in engines.fake_quant.pipeline.transformer.modules()
        if isinstance(m, QuantLinear)
    ]
    packed = [
        m.name for m in engines.packed.pipeline.transformer.modules() if isinstance(m, LowBitLinear)
    ]
    assert packed == fake
    assert len(packed) > 0


@dataclasses.dataclass(frozen=True)
class Recording:
    """One generation of ``REQUEST``: its frames, and per transformer call the noise prediction,
    the timestep and (packed models) the clip factors the first packed layer was set to."""

    frames: np.ndarray
    predictions: list[torch.Tensor]
    timesteps: list[torch.Tensor]
    clips: list[torch.Tensor]


def _generate_recording(engine: DiffusersEngine) -> Recording:
    transformer = engine.pipeline.transformer
    recording = Recording(np.empty(0), [], [], [])

    def record_timestep(_m: nn.Module, _args: object, kwargs: dict[str, torch.Tensor]) -> None:
        recording.timesteps.append(kwargs["timestep"].detach().clone())

    def record_prediction(_m: nn.Module, _args: object, output: tuple[torch.Tensor, ...]) -> None:
        recording.predictions.append(output[0].detach().clone())

    def record_clip(m: nn.Module, _args: object) -> None:
        recording.clips.append(m.sample_clip.clone())

    handles = [
        transformer.register_forward_pre_hook(record_timestep, with_kwargs=True),
        transformer.register_forward_hook(record_prediction),
    ]
    layer = next((m for m in transformer.modules() if isinstance(m, LowBitLinear)), None)
    if layer is not None:
        handles.append(layer.register_forward_pre_hook(record_clip))
    try:
        frames = engine.generate(REQUEST).frames
    finally:
        for handle in handles:
            handle.remove()
    return dataclasses.replace(recording, frames=frames)


@pytest.fixture(scope="module")
def packed_run(engines: QuantizedPair) -> Recording:
    """The packed engine's generation of ``REQUEST``, recorded once for the tests below."""
    return _generate_recording(engines.packed)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_packed_output_equals_fake_quant_output(
    engines: QuantizedPair, packed_run: Recording
) -> None:
    fake = _generate_recording(engines.fake_quant)
    assert len(packed_run.predictions) == len(fake.predictions) > 0
    pairs = zip(packed_run.predictions, fake.predictions, strict=True)
    errors = [_relative(p, f) for p, f in pairs]
    assert max(errors) <= MAX_RELATIVE_PREDICTION_ERROR, errors
    difference = np.abs(packed_run.frames.astype(np.int16) - fake.frames.astype(np.int16))
    assert difference.max() <= MAX_LEVEL_DIFFERENCE, (difference.max(), difference.mean())
    # The test can tell models apart: the unquantized model predicts something else.
    plain = _generate_recording(engines.plain)
    assert (
        _relative(plain.predictions[0], fake.predictions[0]) > 100 * MAX_RELATIVE_PREDICTION_ERROR
    )


def test_packed_generation_is_reproducible(engines: QuantizedPair, packed_run: Recording) -> None:
    assert np.array_equal(packed_run.frames, engines.packed.generate(REQUEST).frames)
    assert not np.array_equal(
        packed_run.frames, engines.packed.generate(dataclasses.replace(REQUEST, seed=12)).frames
    )


def test_every_forward_call_uses_the_clip_group_of_its_timestep(
    engines: QuantizedPair, packed_run: Recording
) -> None:
    """g(t) on every denoising step, with guidance (Wan: two calls per step, CogVideoX: one
    call with a batch of two): the first packed layer's clip factors are its table's row g(t)."""
    timesteps, clips = packed_run.timesteps, packed_run.clips
    layer = next(
        m for m in engines.packed.pipeline.transformer.modules() if isinstance(m, LowBitLinear)
    )
    assert len(timesteps) == len(clips) >= REQUEST.num_inference_steps
    for t, clip in zip(timesteps, clips, strict=True):
        assert torch.equal(clip, layer.act_clip[timestep_to_group(t, SCHEME.clip_groups)])
    assert len({tuple(c[0].tolist()) for c in clips}) > 1
