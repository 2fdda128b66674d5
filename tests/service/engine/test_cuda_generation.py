"""The engine on a CUDA device: bf16, peak VRAM, text-encoder offload, packed W4A4."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from service.engine.diffusers_engine import DiffusersEngine
from service.engine.loading import MemoryOptions
from service.engine.types import GenerationCancelled, GenerationRequest
from service.kernels.lowbit_linear import LowBitLinear
from tests.service.engine.packed_pipelines import export_packed_pipeline, fake_quantized_engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REQUEST = GenerationRequest(
    prompt="a white horse walks in the snow",
    negative_prompt="blurry",
    width=32,
    height=16,
    num_frames=9,
    num_inference_steps=3,
    guidance_scale=5.0,
    seed=3,
)


@pytest.fixture(params=["tiny_wan_dir", "tiny_cogvideox_dir"])
def pipeline_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_cuda_generation_in_bf16_with_offloaded_text_encoder(pipeline_dir: Path) -> None:
    options = MemoryOptions(offload_text_encoder=True, vae_tiling=True)
    engine = DiffusersEngine.from_pretrained(pipeline_dir, device="cuda", options=options)
    assert engine.pipeline.transformer.dtype == torch.bfloat16
    video = engine.generate(REQUEST)
    assert video.frames.shape == (9, 16, 32, 3)
    assert video.stats.peak_vram_bytes > 0
    assert engine.pipeline.text_encoder.device.type == "cpu"
    assert engine.pipeline.transformer.device.type == "cuda"
    again = engine.generate(REQUEST)
    assert np.array_equal(video.frames, again.frames)
    other = engine.generate(dataclasses.replace(REQUEST, seed=4))
    assert not np.array_equal(video.frames, other.frames)
    steps: list[int] = []
    with pytest.raises(GenerationCancelled):
        engine.generate(REQUEST, on_step=lambda i, _n: steps.append(i), should_cancel=lambda: True)
    assert steps == []


def test_packed_w4a4_pipeline_generates_on_cuda(pipeline_dir: Path, tmp_path: Path) -> None:
    packed_dir = export_packed_pipeline(
        pipeline_dir, fake_quantized_engine(pipeline_dir), tmp_path / "packed"
    )
    engine = DiffusersEngine.from_pretrained(packed_dir, device="cuda")
    layers = [m for m in engine.pipeline.transformer.modules() if isinstance(m, LowBitLinear)]
    assert layers
    assert all(m.weight_scale.device.type == "cuda" for m in layers)
    video = engine.generate(REQUEST)
    assert video.frames.shape == (9, 16, 32, 3)
    assert video.stats.peak_vram_bytes > 0
    assert np.array_equal(video.frames, engine.generate(REQUEST).frames)


def test_cache_policies_compose_with_compile_and_8bit_attention_on_cuda() -> None:
    """The shipped W4A4 pipeline on the card as a worker serves it with everything on: Triton
    W4A4 layers, compiled blocks (inductor), the 8-bit self-attention, and each cache policy with
    the early guidance stop: passes saved, one video per seed, and no recompilation."""
    from service.engine.caching.offer import CacheDefaults
    from service.engine.compilation import CompileOptions
    from service.engine.types import AttentionKernel, CachePolicy, CompilePolicy

    shipped = Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4"
    torch._dynamo.reset()
    engine = DiffusersEngine.from_pretrained(
        shipped,
        device="cuda",
        compile_options=CompileOptions(policy=CompilePolicy.ON),
        attention=AttentionKernel.INT8,
        cache_defaults=CacheDefaults(),
    )
    request = GenerationRequest(
        prompt="a red circle moving left on a black background", seed=11, guidance_scale=5.0
    )
    engine.warm_up(request)
    plain = engine.generate(request)
    assert plain.stats.transformer_passes == 40
    with torch._dynamo.config.patch(error_on_recompile=True):
        for policy, threshold in (
            (CachePolicy.FIRST_BLOCK, 0.3),
            (CachePolicy.FIRST_BLOCK_POOLED, 0.3),
            (CachePolicy.MAGCACHE, 0.5),
        ):
            cached = dataclasses.replace(
                request, cache=policy, cache_threshold=threshold, guidance_stop=0.5
            )
            first, second = engine.generate(cached), engine.generate(cached)
            assert first.stats.transformer_passes < 30, (policy, first.stats)
            assert np.array_equal(first.frames, second.frames), policy
    torch._dynamo.reset()
