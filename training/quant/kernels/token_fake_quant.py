"""Per-token activation fake quantization as two Triton kernels (forward, backward).

Forward, per token (row) m of x [M, K] — exactly ``qvgen.numerics.quantize_tokens``, the same
float32 expressions in the same order, IEEE round-to-nearest divisions::

    lo = min(α_lo · min_k x, 0),   hi = max(α_hi · max_k x, 0)
    s = max((hi − lo) / L, EPS),   z = clamp(round(−lo / s), 0, L)          L = 2^b − 1
    r_k = round(x_k / s),   q_k = clamp(r_k + z, 0, L),   x̂_k = s · (q_k − z)

Backward: the gradient the eager autograd graph of those expressions gives with
straight-through rounding (``training.quant.ste.round_ste``), written out. With g = ∂ℒ/∂x̂,
c_k = q_k − z and in_k = [0 ≤ r_k + z ≤ L] (clamp passes the gradient on its closed range)::

    ∂ℒ/∂s  = Σ_k g_k c_k − (Σ_k in_k g_k x_k) / s   (+ the path through z, below)
    ∂ℒ/∂z  = −s · Σ_k (1 − in_k) g_k
    z = clamp(round(−lo/s)):     ∂ℒ/∂lo −= [z in range] ∂ℒ/∂z / s,   ∂ℒ/∂s += [·] ∂ℒ/∂z · lo / s²
    s = max((hi − lo)/L, EPS):   ∂ℒ/∂hi = [(hi − lo)/L ≥ EPS] ∂ℒ/∂s / L,   ∂ℒ/∂lo −= the same
    lo = min(α_lo·min x, 0):     ∂ℒ/∂(min x) = [α_lo·min x ≤ 0] α_lo ∂ℒ/∂lo,   ∂ℒ/∂α_lo = [·] min x ∂ℒ/∂lo
    (hi likewise with max, [α_hi·max x ≥ 0])
    ∂ℒ/∂x_k = in_k g_k + [x_k = min x] ∂ℒ/∂(min x) / #min + [x_k = max x] ∂ℒ/∂(max x) / #max

(min and max share their gradient evenly among tied elements, as ``torch.amin`` does). The
eager graph computes the direct term as (in_k g_k s) / s; here it is in_k g_k, which differs by
at most one rounding.

Why: the eager version is a chain of about fifteen float32 kernels over the whole activation,
each saved for the backward pass, on every linear input of the student, in the forward pass
and again in every checkpointed recompute. Here x is read once or twice per pass, x̂ is written
once in the compute dtype, and the backward keeps only x and four float32 numbers per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qvgen.numerics import EPS, check_bits, qmax
from qvgen.triton_numerics import token_scale_zero
from qvgen.triton_support import interpreting

# Columns per chunk of a row, and elements of x per program: small enough that the second
# read of a program's rows (after the per-row reduction) comes from L2.
_CHUNK_MAX = 1024
_PROGRAM_ELEMENTS = 8192
# Per-token statistics saved for the backward pass: s, z, min x, max x.
_STATS = 4


@dataclass(frozen=True)
class _Launch:
    block_m: int
    chunk: int


def _pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1)


def _launch(k: int) -> _Launch:
    chunk = min(_CHUNK_MAX, triton.next_power_of_2(k))
    return _Launch(block_m=_pow2_floor(max(1, _PROGRAM_ELEMENTS // max(chunk, k))), chunk=chunk)


@triton.jit
def _fake_quant_fwd_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    x_ptr,
    clip_ptr,
    out_ptr,
    stats_ptr,
    M,
    K,
    stride_xm,
    stride_om,
    stride_clip_m,
    LEVELS: tl.constexpr,
    EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, CHUNK)
    row_ok = rows < M
    x_rows = x_ptr + rows[:, None] * stride_xm
    # True extremes (not clamped to include 0): the backward pass routes gradients to them.
    run_min = tl.full([BLOCK_M, CHUNK], float("inf"), tl.float32)
    run_max = tl.full([BLOCK_M, CHUNK], float("-inf"), tl.float32)
    for k0 in range(0, K, CHUNK):
        mask = row_ok[:, None] & (k0 + cols[None, :] < K)
        xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        run_min = tl.minimum(run_min, tl.where(mask, xc, float("inf")))
        run_max = tl.maximum(run_max, tl.where(mask, xc, float("-inf")))
    x_min = tl.min(run_min, axis=1)
    x_max = tl.max(run_max, axis=1)

    _, _, _, scale, zero = token_scale_zero(
        clip_ptr, rows, stride_clip_m, row_ok, x_min, x_max, LEVELS, EPSILON, BLOCK_M
    )
    stats = stats_ptr + rows * 4
    tl.store(stats, scale, mask=row_ok)
    tl.store(stats + 1, zero, mask=row_ok)
    tl.store(stats + 2, x_min, mask=row_ok)
    tl.store(stats + 3, x_max, mask=row_ok)

    out_rows = out_ptr + rows[:, None] * stride_om
    for k0 in range(0, K, CHUNK):
        mask = row_ok[:, None] & (k0 + cols[None, :] < K)
        xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        q = tl.floor(tl.math.div_rn(xc, scale[:, None]) + 0.5) + zero[:, None]
        q = tl.minimum(tl.maximum(q, 0.0), LEVELS)
        x_hat = scale[:, None] * (q - zero[:, None])
        tl.store(out_rows + k0 + cols[None, :], x_hat.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fake_quant_bwd_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    grad_ptr,
    clip_ptr,
    stats_ptr,
    dx_ptr,
    dclip_ptr,
    M,
    K,
    stride_xm,
    stride_gm,
    stride_dxm,
    stride_clip_m,
    LEVELS: tl.constexpr,
    EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, CHUNK)
    row_ok = rows < M
    stats = stats_ptr + rows * 4
    scale = tl.load(stats, mask=row_ok, other=1.0)
    zero = tl.load(stats + 1, mask=row_ok, other=0.0)
    x_min = tl.load(stats + 2, mask=row_ok, other=0.0)
    x_max = tl.load(stats + 3, mask=row_ok, other=0.0)
    x_rows = x_ptr + rows[:, None] * stride_xm
    g_rows = grad_ptr + rows[:, None] * stride_gm

    # Pass 1: the per-token sums of the formulas in the module docstring.
    sum_gc = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
    sum_gx_in = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
    sum_g_out = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
    n_min = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
    n_max = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
    for k0 in range(0, K, CHUNK):
        mask = row_ok[:, None] & (k0 + cols[None, :] < K)
        xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        v = tl.floor(tl.math.div_rn(xc, scale[:, None]) + 0.5) + zero[:, None]
        inside = (v >= 0.0) & (v <= LEVELS)
        c = tl.minimum(tl.maximum(v, 0.0), LEVELS) - zero[:, None]
        sum_gc += g * c
        sum_gx_in += tl.where(inside, g * xc, 0.0)
        sum_g_out += tl.where(inside, 0.0, g)
        n_min += tl.where(mask & (xc == x_min[:, None]), 1.0, 0.0)
        n_max += tl.where(mask & (xc == x_max[:, None]), 1.0, 0.0)

    # The saved s and z are these values; lo and the factors are needed again for the chain rule.
    alpha_lo, alpha_hi, lo, _, _ = token_scale_zero(
        clip_ptr, rows, stride_clip_m, row_ok, x_min, x_max, LEVELS, EPSILON, BLOCK_M
    )
    hi = tl.maximum(alpha_hi * x_max, 0.0)
    levels = tl.full([BLOCK_M], LEVELS, tl.float32)

    d_scale = tl.sum(sum_gc, axis=1) - tl.sum(sum_gx_in, axis=1) / scale
    d_zero = -scale * tl.sum(sum_g_out, axis=1)
    z_raw = tl.floor(tl.math.div_rn(-lo, scale) + 0.5)
    d_zero = tl.where((z_raw >= 0.0) & (z_raw <= LEVELS), d_zero, 0.0)
    d_lo = -d_zero / scale
    d_scale += d_zero * lo / (scale * scale)
    d_range = tl.where(tl.math.div_rn(hi - lo, levels) >= EPSILON, d_scale, 0.0) / LEVELS
    d_hi = d_range
    d_lo -= d_range
    d_lo = tl.where(alpha_lo * x_min <= 0.0, d_lo, 0.0)
    d_hi = tl.where(alpha_hi * x_max >= 0.0, d_hi, 0.0)
    tl.store(dclip_ptr + rows * 2, x_min * d_lo, mask=row_ok)
    tl.store(dclip_ptr + rows * 2 + 1, x_max * d_hi, mask=row_ok)
    d_min = alpha_lo * d_lo / tl.maximum(tl.sum(n_min, axis=1), 1.0)
    d_max = alpha_hi * d_hi / tl.maximum(tl.sum(n_max, axis=1), 1.0)

    # Pass 2: ∂ℒ/∂x (the rows' second read mostly hits L2).
    dx_rows = dx_ptr + rows[:, None] * stride_dxm
    for k0 in range(0, K, CHUNK):
        mask = row_ok[:, None] & (k0 + cols[None, :] < K)
        xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        v = tl.floor(tl.math.div_rn(xc, scale[:, None]) + 0.5) + zero[:, None]
        dx = tl.where((v >= 0.0) & (v <= LEVELS), g, 0.0)
        dx += tl.where(xc == x_min[:, None], d_min[:, None], 0.0)
        dx += tl.where(xc == x_max[:, None], d_max[:, None], 0.0)
        tl.store(dx_rows + k0 + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


def store_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels write. Triton's CPU interpreter truncates float32 to bf16 instead of
    rounding to nearest even, as the GPU does; there the kernels write float32 and PyTorch
    rounds, so tests see the GPU's values."""
    return torch.float32 if interpreting() else dtype


def _check(x2d: torch.Tensor, clip: torch.Tensor) -> None:
    if x2d.ndim != 2 or x2d.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(
            f"x must be a 2-D bf16/fp16/fp32 tensor, got {x2d.dtype} {tuple(x2d.shape)}"
        )
    if tuple(clip.shape) != (x2d.shape[0], 2) or clip.dtype != torch.float32:
        raise ValueError(
            f"clip must be float32 [{x2d.shape[0]}, 2], got {clip.dtype} {tuple(clip.shape)}"
        )


def fake_quant_tokens_forward(
    x2d: torch.Tensor, clip: torch.Tensor, bits: int, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂ [M, K] in ``out_dtype``, per-token stats [M, 4]: s, z, min x, max x)."""
    check_bits(bits, "activation bits")
    _check(x2d, clip)
    m, k = x2d.shape
    out = torch.empty((m, k), dtype=store_dtype(out_dtype), device=x2d.device)
    stats = torch.empty((m, _STATS), dtype=torch.float32, device=x2d.device)
    if m and k:
        shape = _launch(k)
        _fake_quant_fwd_kernel[(triton.cdiv(m, shape.block_m),)](
            x2d, clip, out, stats, m, k,
            x2d.stride(0), out.stride(0), clip.stride(0),
            LEVELS=qmax(bits), EPSILON=EPS, BLOCK_M=shape.block_m, CHUNK=shape.chunk,
        )  # fmt: skip
    return out.to(out_dtype), stats


def fake_quant_tokens_backward(
    x2d: torch.Tensor, grad: torch.Tensor, clip: torch.Tensor, stats: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂ℒ/∂x [M, K] in x's dtype, ∂ℒ/∂(α_lo, α_hi) per token [M, 2] float32)."""
    m, k = x2d.shape
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    dx = torch.empty(x2d.shape, dtype=store_dtype(x2d.dtype), device=x2d.device)
    dclip = torch.empty((m, 2), dtype=torch.float32, device=x2d.device)
    if m and k:
        shape = _launch(k)
        _fake_quant_bwd_kernel[(triton.cdiv(m, shape.block_m),)](
            x2d, grad, clip, stats, dx, dclip, m, k,
            x2d.stride(0), grad.stride(0), dx.stride(0), clip.stride(0),
            LEVELS=qmax(bits), EPSILON=EPS, BLOCK_M=shape.block_m, CHUNK=shape.chunk,
        )  # fmt: skip
    return dx.to(x2d.dtype), dclip
