"""The activation quantization kernel reproduces ``qvgen.numerics.quantize_tokens`` exactly."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from qvgen.numerics import quantize_tokens
from service.kernels.activation_quant import QuantLaunch, quantize_activations
from tests.service.kernels.compare import assert_close_verbose

BLOCK_K = 64


def activations(m: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Gaussian rows with outliers, plus rows that hit the edge cases of the range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4
    x[:, :: max(1, k // 7)] *= 6  # outlier channels
    if m >= 4:
        x[1] = 0.0  # all-zero token: the scale falls back to EPS
        x[2] = x[2].abs() + 0.1  # all positive: lo = 0, z_x = 0
        x[3] = torch.linspace(-1.5, 1.5, k)  # many values near half-steps of the grid
    return x.to(dtype)


def clip_factors(m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return 0.5 + 0.5 * torch.rand(m, 2, generator=g)


@pytest.mark.parametrize("m", [1, 7, 33, 128])
@pytest.mark.parametrize("k", [100, 64])
@pytest.mark.parametrize("bits", [4, 3])
def test_codes_scales_sums_equal_reference(m: int, k: int, bits: int, device: torch.device) -> None:
    x = activations(m, k, torch.bfloat16, seed=m * 1000 + k + bits)
    clip = clip_factors(m, seed=m + k)
    qa = quantize_activations(x.to(device), clip.to(device), bits, BLOCK_K)
    ref = quantize_tokens(x, clip[:, 0:1], clip[:, 1:2], bits)

    k_pad = -(-k // BLOCK_K) * BLOCK_K
    assert qa.codes.dtype == torch.int8 and qa.codes.shape == (m, k_pad)
    assert_close_verbose(qa.codes[:, :k], ref.codes, 0, 0, "codes")
    assert_close_verbose(qa.codes[:, k:], torch.zeros(m, k_pad - k), 0, 0, "padding codes")
    assert_close_verbose(qa.scale, ref.scale[:, 0], 0, 0, "scales")
    assert_close_verbose(qa.code_sum, ref.codes.sum(dim=1), 0, 0, "code sums")


@pytest.mark.parametrize(
    ("launch", "k"),
    [
        (QuantLaunch(block_m=2, chunk=128, num_warps=4), 100),  # rows in registers, one pass
        (QuantLaunch(block_m=4, chunk=32, num_warps=4), 100),  # chunked: extremes, then codes
        (QuantLaunch(block_m=4, chunk=32, num_warps=4), 1100),
        (None, 100),  # the defaults: one pass
        (None, 1100),  # the defaults: chunked
    ],
)
def test_both_launch_modes(launch: QuantLaunch | None, k: int, device: torch.device) -> None:
    x = activations(33, k, torch.bfloat16, seed=k)
    clip = clip_factors(33, seed=k)
    qa = quantize_activations(x.to(device), clip.to(device), 4, BLOCK_K, launch)
    ref = quantize_tokens(x, clip[:, 0:1], clip[:, 1:2], 4)
    assert_close_verbose(qa.codes[:, :k], ref.codes, 0, 0, f"codes, {launch}")
    assert_close_verbose(qa.codes[:, k:], torch.zeros_like(qa.codes[:, k:]), 0, 0, "padding")
    assert_close_verbose(qa.scale, ref.scale[:, 0], 0, 0, f"scales, {launch}")
    assert_close_verbose(qa.code_sum, ref.codes.sum(dim=1), 0, 0, f"code sums, {launch}")


def test_division_exact_over_many_magnitudes(device: torch.device) -> None:
    """The quotient x / s_x is formed without a division per element: check it everywhere."""
    g = torch.Generator().manual_seed(123)
    m, k = (512, 4096) if device.type == "cuda" else (16, 512)
    magnitude = 10.0 ** torch.randint(-6, 6, (m, 1), generator=g).float()
    x = (torch.randn(m, k, generator=g) * magnitude).to(torch.bfloat16)
    clip = 0.05 + 0.95 * torch.rand(m, 2, generator=g)  # small α: many codes clamp
    for bits in (2, 4, 7):
        qa = quantize_activations(x.to(device), clip.to(device), bits, BLOCK_K)
        ref = quantize_tokens(x, clip[:, 0:1], clip[:, 1:2], bits)
        assert_close_verbose(qa.codes[:, :k], ref.codes, 0, 0, f"{bits}-bit codes")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_input_dtypes(dtype: torch.dtype, device: torch.device) -> None:
    x = activations(33, 100, dtype, seed=7)
    clip = clip_factors(33, seed=7)
    qa = quantize_activations(x.to(device), clip.to(device), 4, BLOCK_K)
    ref = quantize_tokens(x, clip[:, 0:1], clip[:, 1:2], 4)
    assert_close_verbose(qa.codes[:, :100], ref.codes, 0, 0, f"{dtype} codes")
    assert_close_verbose(qa.scale, ref.scale[:, 0], 0, 0, f"{dtype} scales")


def test_strided_rows_are_read_correctly(device: torch.device) -> None:
    wide = activations(7, 160, torch.bfloat16, seed=3)
    x = wide[:, 10:110]  # row stride 160, not contiguous
    clip = clip_factors(7, seed=3)
    qa = quantize_activations(x.to(device), clip.to(device), 4, BLOCK_K)
    ref = quantize_tokens(x, clip[:, 0:1], clip[:, 1:2], 4)
    assert_close_verbose(qa.codes[:, :100], ref.codes, 0, 0, "codes of a strided view")


def test_rejects_bits_beyond_int8(device: torch.device) -> None:
    x = torch.ones(2, 8, device=device)
    with pytest.raises(ValueError, match="≤ 7"):
        quantize_activations(x, torch.ones(2, 2, device=device), 8, BLOCK_K)
