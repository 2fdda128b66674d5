"""Fused q/k/v (and cross-attention k/v): one activation pass and one GEMM launch give exactly
the separate layers' outputs, each with the codes of its own clip table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from qvgen.numerics import quantize_tokens
from service.kernels.activation_quant import (
    QuantLaunch,
    quantize_activations,
    quantize_activations_shared,
)
from service.kernels.fused_projections import (
    FusedLowBitLinear,
    FusionRefused,
    fuse_attention_projections,
)
from service.kernels.lowbit_linear import KernelBackend, TritonLowBitLinear, build_lowbit_linear
from service.kernels.packed_transformer import load_packed_transformer
from tests.service.kernels.compare import assert_close_verbose
from tests.service.kernels.test_lowbit_linear import forbid_name_reads, packed_weights

SHIPPED_TRANSFORMER = (
    Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4" / "transformer"
)


@pytest.mark.parametrize("k", [100, 1100])  # rows in registers; chunked
def test_shared_pass_gives_each_tables_codes(k: int, device: torch.device) -> None:
    g = torch.Generator().manual_seed(k)
    x = (torch.randn(33, k, generator=g) * 3).to(torch.bfloat16).to(device)
    clips = (0.3 + 0.7 * torch.rand(3, 33, 2, generator=g)).to(device)
    shared = quantize_activations_shared(x, clips, 4, 64)
    assert shared.codes.shape[:2] == (3, 33)
    for c in range(3):
        alone = quantize_activations(x, clips[c], 4, 64)
        assert_close_verbose(shared.codes[c], alone.codes, 0, 0, f"codes of table {c}")
        assert_close_verbose(shared.scale[c], alone.scale, 0, 0, f"scales of table {c}")
        assert_close_verbose(shared.code_sum[c], alone.code_sum, 0, 0, f"sums of table {c}")
        ref = quantize_tokens(x.cpu(), clips[c, :, 0:1].cpu(), clips[c, :, 1:2].cpu(), 4)
        assert_close_verbose(shared.codes[c, :, :k], ref.codes, 0, 0, f"contract, table {c}")
    # The tables really differ, so one shared set of codes would not have done.
    assert not torch.equal(shared.codes[0], shared.codes[1])
    # An explicit chunked launch of the single-table path agrees as well.
    chunked = quantize_activations(x, clips[2], 4, 64, QuantLaunch(4, 32, 4))
    assert torch.equal(chunked.codes, shared.codes[2])


def projections(device: torch.device, bias: bool, n: int = 128) -> list[TritonLowBitLinear]:
    layers = []
    for seed in range(3):
        w = packed_weights(k=200, n=n, bits=4, device=device, seed=10 + seed)
        if not bias:
            w = dataclasses.replace(w, bias=None)
        layer = build_lowbit_linear(w, KernelBackend.TRITON, block_k=64)
        assert isinstance(layer, TritonLowBitLinear)
        layers.append(layer)
    return layers


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [[1], [0, 3]])
def test_fused_equals_separate_exactly(bias: bool, groups: list[int], device: torch.device) -> None:
    layers = projections(device, bias)
    fused = FusedLowBitLinear(layers)
    g = torch.Generator().manual_seed(len(groups))
    x = torch.randn(len(groups), 17, 200, generator=g).to(torch.bfloat16).to(device)
    for m in (*layers, fused):
        m.set_clip_group(torch.tensor(groups))
    with torch.no_grad():
        expected = torch.cat([m(x) for m in layers], dim=-1)
        got = fused(x)
    assert_close_verbose(got, expected, 0, 0, f"fused vs separate, groups {groups}")


def test_fused_forward_does_not_read_the_layers_name(device: torch.device) -> None:
    """As ``test_lowbit_linear.test_forward_does_not_read_the_layers_name``, for the fused
    layer (its name is the joined names of its block's projections)."""
    fused = FusedLowBitLinear(projections(device, bias=True))
    fused.set_clip_group(torch.tensor([2]))
    forbid_name_reads(fused)
    x = torch.randn(1, 3, 200, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    with torch.no_grad():
        assert fused(x.to(device)).shape == (1, 3, 3 * 128)


def test_fusion_refuses_what_it_cannot_compute_as_one(device: torch.device) -> None:
    layers = projections(device, bias=True)
    odd = build_lowbit_linear(
        dataclasses.replace(packed_weights(200, 128, 4, device, seed=3), bias=None),
        KernelBackend.TRITON,
        block_k=64,
    )
    assert isinstance(odd, TritonLowBitLinear)
    with pytest.raises(FusionRefused, match="differ"):
        FusedLowBitLinear([layers[0], odd])
    narrow = projections(device, bias=True, n=40)  # not a multiple of the GEMM tile
    with pytest.raises(FusionRefused, match="multiple"):
        FusedLowBitLinear(narrow)


def test_fused_shipped_transformer_equals_unfused(device: torch.device) -> None:
    separate = load_packed_transformer(
        SHIPPED_TRANSFORMER, device=device, backend=KernelBackend.TRITON
    )
    fused = load_packed_transformer(
        SHIPPED_TRANSFORMER, device=device, backend=KernelBackend.TRITON, fuse_projections=True
    )
    assert sum(isinstance(m, FusedLowBitLinear) for m in fused.modules()) == 2 * len(fused.blocks)
    assert fuse_attention_projections(fused) == 0  # nothing left to fuse
    g = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 8, 2, 4, 4, generator=g).to(device),
        "encoder_hidden_states": torch.randn(1, 8, 64, generator=g).to(device),
        "return_dict": False,
    }
    for t in (900.0, 30.0):
        with torch.no_grad():
            a = separate(**inputs, timestep=torch.tensor([t], device=device))[0]
            b = fused(**inputs, timestep=torch.tensor([t], device=device))[0]
        assert_close_verbose(b, a, 0, 0, f"fused vs separate transformer, t={t}")
