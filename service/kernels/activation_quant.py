"""Per-token activation quantization in one pass: x [M, K] → centred int8 codes, s_x, Σ_k c_x.

Computes exactly ``qvgen.numerics.quantize_tokens`` (same float32 expressions, same order,
IEEE round-to-nearest divisions through ``tl.math.div_rn``, rounding floor(v + 0.5))::

    lo = min(α_lo · min_k x, 0)      hi = max(α_hi · max_k x, 0)
    s_x = max((hi − lo) / (2^b − 1), EPS)      z_x = clamp(round(−lo / s_x), 0, 2^b − 1)
    c_x = clamp(round(x / s_x) + z_x, 0, 2^b − 1) − z_x                 ∈ [−(2^b − 1), 2^b − 1]

Each program keeps whole rows in registers, so x is read once and the codes written once.

**Container choice: int8, not packed int4.** The GEMM is compute-bound at video token counts:
at M = 32760, K = 5120 writing int8 codes instead of nibbles costs 84 MB more traffic, about
0.03 ms at 3 TB/s, against a ~4 ms GEMM, while unpacking an operand inside the GEMM's K-loop
cost 20–40 % of the int8 dot's speed on an H200 (``shared/reference/anchors.md``). Centred codes
need 2^b − 1 ≤ 127, so activations of up to 7 bits fit; the epilogue then needs only the
per-token code sums, no per-channel weight sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qvgen.numerics import EPS, check_bits, qmax
from service.kernels.weight_layout import MAX_KERNEL_BITS, padded_width

# Elements of x one program holds; whole rows at a time (at least one).
_ELEMENTS_PER_PROGRAM = 8192


@dataclass(frozen=True)
class QuantizedActivations:
    """Activations ready for the GEMM.

    codes: int8 [M, K_pad], centred codes c_x, zero beyond ``in_features``.
    scale: float32 [M], s_x.
    code_sum: int32 [M], Σ_k c_x.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    code_sum: torch.Tensor
    in_features: int


@triton.jit
def _quantize_tokens_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    # pointers
    x_ptr,
    clip_ptr,
    codes_ptr,
    scale_ptr,
    sum_ptr,
    # sizes
    M,
    K,
    K_PAD,
    # strides
    stride_xm,
    stride_clip_m,
    stride_codes_m,
    # meta-parameters
    LEVELS: tl.constexpr,
    EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    # Columns past K load as 0. That cannot move lo or hi, which are clamped to include 0, and
    # it quantizes to c_x = 0: exactly the zero padding the GEMM's K-blocks need.
    x = tl.load(
        x_ptr + rows[:, None] * stride_xm + cols[None, :],
        mask=row_ok[:, None] & (cols[None, :] < K),
        other=0.0,
    ).to(tl.float32)
    alpha_lo = tl.load(clip_ptr + rows * stride_clip_m, mask=row_ok, other=1.0)
    alpha_hi = tl.load(clip_ptr + rows * stride_clip_m + 1, mask=row_ok, other=1.0)
    lo = tl.minimum(alpha_lo * tl.min(x, axis=1), 0.0)
    hi = tl.maximum(alpha_hi * tl.max(x, axis=1), 0.0)
    levels = tl.full([BLOCK_M], LEVELS, tl.float32)
    scale = tl.maximum(tl.math.div_rn(hi - lo, levels), EPSILON)
    zero = tl.minimum(tl.maximum(tl.floor(tl.math.div_rn(-lo, scale) + 0.5), 0.0), levels)
    q = tl.floor(tl.math.div_rn(x, scale[:, None]) + 0.5) + zero[:, None]
    q = tl.minimum(tl.maximum(q, 0.0), levels[:, None])
    codes = (q - zero[:, None]).to(tl.int32)
    tl.store(
        codes_ptr + rows[:, None] * stride_codes_m + cols[None, :],
        codes.to(tl.int8),
        mask=row_ok[:, None] & (cols[None, :] < K_PAD),
    )
    tl.store(scale_ptr + rows, scale, mask=row_ok)
    tl.store(sum_ptr + rows, tl.sum(codes, axis=1), mask=row_ok)


def quantize_activations(
    x2d: torch.Tensor, clip: torch.Tensor, bits: int, block_k: int
) -> QuantizedActivations:
    """Quantize x [M, K] (bf16, fp16 or fp32) per token with per-row clip factors [M, 2].

    Codes come back zero-padded to a multiple of ``block_k`` columns (the GEMM's K-block).
    """
    check_bits(bits, "activation bits")
    if bits > MAX_KERNEL_BITS:
        raise ValueError(f"activation bits must be ≤ {MAX_KERNEL_BITS} for int8 codes, got {bits}")
    if x2d.ndim != 2 or x2d.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(
            f"x must be a 2-D bf16/fp16/fp32 tensor, got {x2d.dtype} {tuple(x2d.shape)}"
        )
    m, k = x2d.shape
    if tuple(clip.shape) != (m, 2):
        raise ValueError(f"clip must be [{m}, 2], got {tuple(clip.shape)}")
    x2d = x2d if x2d.stride(1) == 1 else x2d.contiguous()
    clip = clip.to(device=x2d.device, dtype=torch.float32).contiguous()
    k_pad = padded_width(k, block_k)
    codes = torch.empty((m, k_pad), dtype=torch.int8, device=x2d.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    code_sum = torch.empty((m,), dtype=torch.int32, device=x2d.device)
    if m:
        block_k_full = triton.next_power_of_2(k_pad)
        block_m = max(1, min(64, _ELEMENTS_PER_PROGRAM // block_k_full))
        _quantize_tokens_kernel[(triton.cdiv(m, block_m),)](
            x2d, clip, codes, scale, code_sum,
            m, k, k_pad,
            x2d.stride(0), clip.stride(0), codes.stride(0),
            LEVELS=qmax(bits), EPSILON=EPS, BLOCK_M=block_m, BLOCK_K=block_k_full,
            num_warps=16 if block_k_full > 8192 else 8,
        )  # fmt: skip
    return QuantizedActivations(codes=codes, scale=scale, code_sum=code_sum, in_features=k)
