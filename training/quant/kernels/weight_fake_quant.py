"""Per-channel weight fake quantization as two Triton kernels (forward, backward).

Forward, per output channel (row) n of the latent weight w [N, K] — exactly
``qvgen.numerics.weight_codes`` then ``dequantize_weight``, IEEE division, half-up rounding::

    r_k = round(w_k / s + z),   q_k = clamp(r_k, 0, L),   ŵ_k = s · (q_k − z)      L = 2^b − 1

written once in the compute dtype (bf16 under autocast), so the float32 ŵ the eager version
materialises, and the cast after it, never exist. An optional float32 addend A [N, K] (Φ's
L·diag(γ)·R) is added before that single rounding: the layer then multiplies by ŵ + A in one
GEMM, and ∂ℒ/∂A = g.

Backward: the gradient of the eager graph with straight-through rounding, written out. With
g = ∂ℒ/∂ŵ and in_k = [0 ≤ r_k ≤ L]::

    ∂ℒ/∂w_k = in_k g_k
    ∂ℒ/∂s   = Σ_k g_k (q_k − z) − (Σ_k in_k g_k w_k) / s
    ∂ℒ/∂z   = −s · Σ_k (1 − in_k) g_k

(LSQ+: inside the range ∂ŵ/∂s = (q − z) − w/s, outside q − z.) Whatever produced s and z — the
step-size clamp, LSQ's gradient scale — stays in the autograd graph around this function.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qvgen.numerics import check_bits, qmax
from training.quant.kernels.token_fake_quant import store_dtype

_CHUNK_MAX = 1024
_PROGRAM_ELEMENTS = 8192


def _pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1)


def _launch(k: int) -> tuple[int, int]:
    chunk = min(_CHUNK_MAX, triton.next_power_of_2(k))
    return _pow2_floor(max(1, _PROGRAM_ELEMENTS // max(chunk, k))), chunk


@triton.jit
def _weight_fq_fwd_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    w_ptr,
    scale_ptr,
    zero_ptr,
    add_ptr,
    out_ptr,
    N,
    K,
    stride_wn,
    stride_an,
    stride_on,
    LEVELS: tl.constexpr,
    HAS_ADDEND: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, CHUNK)
    row_ok = rows < N
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=1.0)
    zero = tl.load(zero_ptr + rows, mask=row_ok, other=0.0)
    for k0 in range(0, K, CHUNK):
        mask = row_ok[:, None] & (k0 + cols[None, :] < K)
        w = tl.load(w_ptr + rows[:, None] * stride_wn + k0 + cols[None, :], mask=mask, other=0.0)
        v = tl.math.div_rn(w.to(tl.float32), scale[:, None]) + zero[:, None]
        q = tl.minimum(tl.maximum(tl.floor(v + 0.5), 0.0), LEVELS)
        w_hat = scale[:, None] * (q - zero[:, None])
        if HAS_ADDEND:
            w_hat += tl.load(
                add_ptr + rows[:, None] * stride_an + k0 + cols[None, :], mask=mask, other=0.0
            )
        tl.store(
            out_ptr + rows[:, None] * stride_on + k0 + cols[None, :],
            w_hat.to(out_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit
def _weight_fq_bwd_kernel(  # type: ignore[no-untyped-def]
    w_ptr,
    grad_ptr,
    scale_ptr,
    zero_ptr,
    dw_ptr,
    dscale_ptr,
    dzero_ptr,
    N,
    K,
    stride_wn,
    stride_gn,
    stride_dwn,
    LEVELS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, CHUNK)
    row_ok = rows < N
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=1.0)
    zero = tl.load(zero_ptr + rows, mask=row_ok, other=0.0)
    sum_gc = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
    sum_gw_in = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
    sum_g_out = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
    for k0 in range(0, K, CHUNK):
        mask = row_ok[:, None] & (k0 + cols[None, :] < K)
        w = tl.load(w_ptr + rows[:, None] * stride_wn + k0 + cols[None, :], mask=mask, other=0.0)
        w = w.to(tl.float32)
        g = tl.load(grad_ptr + rows[:, None] * stride_gn + k0 + cols[None, :], mask=mask, other=0.0)
        g = g.to(tl.float32)
        r = tl.floor(tl.math.div_rn(w, scale[:, None]) + zero[:, None] + 0.5)
        inside = (r >= 0.0) & (r <= LEVELS)
        sum_gc += g * (tl.minimum(tl.maximum(r, 0.0), LEVELS) - zero[:, None])
        sum_gw_in += tl.where(inside, g * w, 0.0)
        sum_g_out += tl.where(inside, 0.0, g)
        tl.store(
            dw_ptr + rows[:, None] * stride_dwn + k0 + cols[None, :],
            tl.where(inside, g, 0.0).to(dw_ptr.dtype.element_ty),
            mask=mask,
        )
    d_scale = tl.sum(sum_gc, axis=1) - tl.sum(sum_gw_in, axis=1) / scale
    tl.store(dscale_ptr + rows, d_scale, mask=row_ok)
    tl.store(dzero_ptr + rows, -scale * tl.sum(sum_g_out, axis=1), mask=row_ok)


def _flat(v: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if v.numel() != n:
        raise ValueError(f"{what} must hold one value per output channel ({n}), got {v.shape}")
    return v.detach().reshape(n).float().contiguous()


def fake_quant_weight_forward(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    out_dtype: torch.dtype,
    addend: torch.Tensor | None = None,
) -> torch.Tensor:
    """ŵ (+ ``addend``) [N, K] in ``out_dtype`` from the latent weight and per-channel s, z
    ([N] or [N, 1]); ``addend`` float32 [N, K] or None."""
    check_bits(bits, "weight bits")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D, got {tuple(weight.shape)}")
    n, k = weight.shape
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    if addend is not None:
        if addend.shape != weight.shape or addend.dtype != torch.float32:
            raise ValueError(
                f"addend must be float32 {tuple(weight.shape)}, got {addend.dtype} "
                f"{tuple(addend.shape)}"
            )
        addend = addend if addend.stride(1) == 1 else addend.contiguous()
    out = torch.empty((n, k), dtype=store_dtype(out_dtype), device=weight.device)
    if n and k:
        rows, chunk = _launch(k)
        extra = weight if addend is None else addend  # never read without HAS_ADDEND
        _weight_fq_fwd_kernel[(triton.cdiv(n, rows),)](
            weight, _flat(scale, n, "scale"), _flat(zero, n, "zero point"), extra, out, n, k,
            weight.stride(0), extra.stride(0), out.stride(0), LEVELS=qmax(bits),
            HAS_ADDEND=addend is not None, BLOCK_N=rows, CHUNK=chunk,
        )  # fmt: skip
    return out.to(out_dtype)


def fake_quant_weight_backward(
    weight: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂ℒ/∂w [N, K] in w's dtype, ∂ℒ/∂s [N], ∂ℒ/∂z [N]) float32 sums per channel."""
    n, k = weight.shape
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    dw = torch.empty(weight.shape, dtype=store_dtype(weight.dtype), device=weight.device)
    dscale = torch.empty((n,), dtype=torch.float32, device=weight.device)
    dzero = torch.empty((n,), dtype=torch.float32, device=weight.device)
    if n and k:
        rows, chunk = _launch(k)
        _weight_fq_bwd_kernel[(triton.cdiv(n, rows),)](
            weight, grad, _flat(scale, n, "scale"), _flat(zero, n, "zero point"),
            dw, dscale, dzero, n, k, weight.stride(0), grad.stride(0), dw.stride(0),
            LEVELS=qmax(bits), BLOCK_N=rows, CHUNK=chunk,
        )  # fmt: skip
    return dw.to(weight.dtype), dscale, dzero
