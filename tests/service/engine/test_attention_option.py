"""The engine's self-attention choice: the 8-bit kernel on Wan, SDPA elsewhere."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from service.engine.diffusers_engine import DiffusersEngine
from service.engine.types import AttentionKernel, GenerationRequest
from service.kernels.wan_attention import Int8SelfAttnProcessor

# What these tests check is the engine's wiring, not the Triton kernels.
pytestmark = pytest.mark.usefixtures("reference_backend")

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4"
REQUEST = GenerationRequest(
    prompt="a blue ball", width=32, height=32, num_frames=9, num_inference_steps=2
)


def test_wan_self_attention_moves_to_the_kernel() -> None:
    plain = DiffusersEngine.from_pretrained(SHIPPED)
    ours = DiffusersEngine.from_pretrained(SHIPPED, attention=AttentionKernel.INT8)
    blocks = ours.pipeline.transformer.blocks
    assert all(isinstance(b.attn1.processor, Int8SelfAttnProcessor) for b in blocks)
    assert ours.attention is AttentionKernel.INT8
    # The shipped model's head dim (32) is not the kernel's: it falls back to SDPA inside the
    # processor, which then computes diffusers' video exactly.
    np.testing.assert_array_equal(ours.generate(REQUEST).frames, plain.generate(REQUEST).frames)


def test_cogvideox_keeps_sdpa_with_a_warning(
    tiny_cogvideox_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.engine.diffusers_engine"):
        engine = DiffusersEngine.from_pretrained(tiny_cogvideox_dir, attention=AttentionKernel.INT8)
    assert engine.attention is AttentionKernel.SDPA
    assert any("written for Wan" in r.getMessage() for r in caplog.records)
