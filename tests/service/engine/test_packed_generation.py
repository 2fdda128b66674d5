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


def _generate_recording(engine: DiffusersEngine) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Frames, and every noise prediction the transformer made on the way."""
    predictions: list[torch.Tensor] = []

    def record(_module: nn.Module, _args: object, output: tuple[torch.Tensor, ...]) -> None:
        predictions.append(output[0].detach().clone())

    handle = engine.pipeline.transformer.register_forward_hook(record)
    try:
        frames = engine.generate(REQUEST).frames
    finally:
        handle.remove()
    return frames, predictions


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_packed_output_equals_fake_quant_output(engines: QuantizedPair) -> None:
    fake_frames, fake_predictions = _generate_recording(engines.fake_quant)
    packed_frames, packed_predictions = _generate_recording(engines.packed)
    assert len(packed_predictions) == len(fake_predictions) > 0
    errors = [_relative(p, f) for p, f in zip(packed_predictions, fake_predictions, strict=True)]
    assert max(errors) <= MAX_RELATIVE_PREDICTION_ERROR, errors
    difference = np.abs(packed_frames.astype(np.int16) - fake_frames.astype(np.int16))
    assert difference.max() <= MAX_LEVEL_DIFFERENCE, (difference.max(), difference.mean())
    # The test can tell models apart: the unquantized model predicts something else.
    _, plain_predictions = _generate_recording(engines.plain)
    assert (
        _relative(plain_predictions[0], fake_predictions[0]) > 100 * MAX_RELATIVE_PREDICTION_ERROR
    )


def test_packed_generation_is_reproducible(engines: QuantizedPair) -> None:
    first = engines.packed.generate(REQUEST).frames
    assert np.array_equal(first, engines.packed.generate(REQUEST).frames)
    assert not np.array_equal(
        first, engines.packed.generate(dataclasses.replace(REQUEST, seed=12)).frames
    )


def test_every_forward_call_uses_the_clip_group_of_its_timestep(engines: QuantizedPair) -> None:
    """g(t) on every denoising step, with guidance (Wan: two calls per step,
    CogVideoX: one call with a batch of two)."""
    transformer = engines.packed.pipeline.transformer
    layer = next(m for m in transformer.modules() if isinstance(m, LowBitLinear))
    timesteps: list[torch.Tensor] = []
    clips: list[torch.Tensor] = []

    def record_timestep(_m: nn.Module, _args: object, kwargs: dict[str, torch.Tensor]) -> None:
        timesteps.append(kwargs["timestep"].detach().clone())

    def record_clip(m: nn.Module, _args: object) -> None:
        clips.append(m.sample_clip.clone())

    handles = [
        transformer.register_forward_pre_hook(record_timestep, with_kwargs=True),
        layer.register_forward_pre_hook(record_clip),
    ]
    try:
        engines.packed.generate(REQUEST)
    finally:
        for handle in handles:
            handle.remove()
    assert len(timesteps) == len(clips) >= REQUEST.num_inference_steps
    for t, clip in zip(timesteps, clips, strict=True):
        assert torch.equal(clip, layer.act_clip[timestep_to_group(t, SCHEME.clip_groups)])
    assert len({tuple(c[0].tolist()) for c in clips}) > 1
