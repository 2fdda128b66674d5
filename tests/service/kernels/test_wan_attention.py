"""Wan's self-attention on the 8-bit kernel: the processor computes what diffusers' does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from benchmarks.random_models import WanArchitecture, random_bf16_transformer
from service.kernels.attention_int8 import BOUNDS
from service.kernels.lowbit_linear import KernelBackend
from service.kernels.packed_transformer import load_packed_transformer
from service.kernels.wan_attention import Int8SelfAttnProcessor, use_int8_self_attention
from tests.service.kernels.compare import assert_close_verbose

SHIPPED_TRANSFORMER = (
    Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4" / "transformer"
)


def _inputs(text_dim: int, channels: int, device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, channels, 2, 4, 4, generator=g).to(device, dtype),
        "timestep": torch.tensor([600.0], device=device),
        "encoder_hidden_states": torch.randn(1, 8, text_dim, generator=g).to(device, dtype),
        "return_dict": False,
    }


@pytest.mark.parametrize("fuse", [False, True])
def test_processor_equals_diffusers_where_it_falls_back(fuse: bool, device: torch.device) -> None:
    """The shipped model's head dim (32) is not the kernel's: the processor runs SDPA, and must
    then give diffusers' output exactly — projections (fused or not), norms, rotary, output."""
    baseline = load_packed_transformer(
        SHIPPED_TRANSFORMER, device=device, backend=KernelBackend.TRITON, fuse_projections=fuse
    )
    ours = load_packed_transformer(
        SHIPPED_TRANSFORMER, device=device, backend=KernelBackend.TRITON, fuse_projections=fuse
    )
    assert use_int8_self_attention(ours) == len(ours.blocks)
    assert all(isinstance(b.attn1.processor, Int8SelfAttnProcessor) for b in ours.blocks)
    assert not any(isinstance(b.attn2.processor, Int8SelfAttnProcessor) for b in ours.blocks)
    inputs = _inputs(64, 8, device, torch.float32)
    with torch.no_grad():
        expected, got = baseline(**inputs)[0], ours(**inputs)[0]
    assert_close_verbose(got, expected, 0, 0, "processor (SDPA fallback) vs diffusers")


def test_bf16_transformer_on_the_kernel_stays_close(device: torch.device) -> None:
    arch = WanArchitecture(
        "tiny-64", num_layers=2, num_heads=2, head_dim=64, ffn_dim=64, text_dim=32, freq_dim=32,
        latent_channels=4,
    )  # fmt: skip
    model = random_bf16_transformer(arch, device, torch.bfloat16, seed=1)
    inputs = _inputs(32, 4, device, torch.bfloat16)
    with torch.no_grad():
        expected = model(**inputs)[0].double()
        use_int8_self_attention(model)
        got = model(**inputs)[0].double()
    error = float((got - expected).norm() / expected.norm())
    assert 0 < error <= BOUNDS[True][0], error
