"""8-bit self-attention against a float64 reference, on odd shapes, within its stated bound."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("triton")

from service.kernels import attention_int8
from service.kernels.attention_int8 import BOUNDS, AttentionTiles, int8_attention


def inputs(
    b: int, m: int, n: int, h: int, d: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, m, h, d, generator=g)
    # A large per-channel offset of the keys, as diffusion transformers have: smoothing K
    # must take it out before the int8 grid is laid.
    k = torch.randn(b, n, h, d, generator=g) + 4 * torch.randn(1, 1, h, d, generator=g)
    v = torch.randn(b, n, h, d, generator=g)
    return tuple(t.to(torch.bfloat16).to(device) for t in (q, k, v))  # type: ignore[return-value]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q64, k64, v64 = (t.double().transpose(1, 2).cpu() for t in (q, k, v))
    return F.scaled_dot_product_attention(q64, k64, v64).transpose(1, 2)


def check(out: torch.Tensor, ref: torch.Tensor, what: str, pv_fp8: bool = True) -> None:
    max_error, min_cosine = BOUNDS[pv_fp8]
    out = out.double().cpu()
    error = float((out - ref).norm() / ref.norm())
    cosine = float(F.cosine_similarity(out.flatten(), ref.flatten(), dim=0))
    assert error <= max_error and cosine >= min_cosine, (
        f"{what}: ‖Δ‖/‖ref‖ = {error:.4f} (bound {max_error}), cosine {cosine:.5f}"
    )


@pytest.mark.parametrize(
    ("b", "m", "n", "h", "d"),
    [
        (1, 37, 37, 2, 64),
        (2, 50, 50, 1, 128),
        (1, 20, 45, 2, 64),
        (1, 1, 17, 1, 64),
        (1, 33, 40, 4, 32),
    ],
)
def test_matches_float64_reference_on_odd_shapes(
    b: int, m: int, n: int, h: int, d: int, device: torch.device
) -> None:
    q, k, v = inputs(b, m, n, h, d, device, seed=m + n + d)
    out = int8_attention(q, k, v)
    assert out.shape == (b, m, h, d) and out.dtype == torch.bfloat16
    check(out, reference(q, k, v), f"{b}×{m}×{n}×{h}×{d}")


@pytest.mark.parametrize("tiles", [AttentionTiles(16, 32, 4, 1), AttentionTiles(64, 32, 4, 2)])
def test_other_tiles_quantize_for_their_own_blocks(
    tiles: AttentionTiles, device: torch.device
) -> None:
    """The tiles are the quantization blocks too: any tile the benchmark's sweep picks keeps
    the bound (a q or k scale laid for another block size would read the wrong scales)."""
    q, k, v = inputs(1, 70, 45, 2, 64, device, seed=3)
    check(int8_attention(q, k, v, tiles), reference(q, k, v), tiles.label())


def test_fp16_pv_where_fp8_is_missing(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attention_int8, "_fp8_available", lambda _device: False)
    q, k, v = inputs(1, 40, 40, 2, 64, device, seed=1)
    check(int8_attention(q, k, v), reference(q, k, v), "fp16 P·V", pv_fp8=False)


def test_unsupported_head_dim_falls_back_to_sdpa_with_one_log_line(
    device: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    attention_int8._log_fallback.cache_clear()
    q, k, v = inputs(1, 9, 9, 2, 48, device, seed=2)
    with caplog.at_level(logging.WARNING, logger="service.kernels.attention_int8"):
        first = int8_attention(q, k, v)
        int8_attention(q, k, v)
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    )
    assert torch.equal(first, expected.transpose(1, 2))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "head dim 48" in lines[0] and "SDPA" in lines[0]


def test_compiles_without_graph_break(device: torch.device) -> None:
    q, k, v = inputs(1, 33, 33, 1, 64, device, seed=3)
    compiled = torch.compile(int8_attention, fullgraph=True)
    check(compiled(q, k, v), reference(q, k, v), "compiled")
