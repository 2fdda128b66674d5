"""Pure-PyTorch reference of the quantized linear: the ground truth for every kernel.

Computes, for activations x [M, K] and one packed layer (``qvgen/numerics.py`` has the math)::

    c_x, s_x, z_x = quantize_tokens(x, α_lo[m], α_hi[m], b_a)
    acc[m, n]     = Σ_k c_x[m, k] · q_w[n, k]                        (exact integers)
    y[m, n]       = s_x[m] · s_w[n] · (acc[m, n] − z_w[n] · Σ_k c_x[m, k]) + b[n]

The integer product runs as a float matmul: float32 represents every partial sum exactly as
long as K · max|c_x| · max q_w < 2^24 (K < 74 565 at W4A4), otherwise float64 (exact below
2^53). So the result is exact on any device, CPU included, with no integer-GEMM support needed.
"""

from __future__ import annotations

import torch

from qvgen.numerics import qmax, quantize_tokens
from qvgen.packed_layer import PackedLinearWeights

_FP32_EXACT_LIMIT = 1 << 24


def integer_matmul(x_codes: torch.Tensor, w_codes: torch.Tensor, bound: int) -> torch.Tensor:
    """Exact Σ_k x_codes[m, k] · w_codes[n, k] for integer-valued tensors; ``bound`` ≥ |terms|.

    Returns float64 when float32 could round, else float32; every value is an exact integer.
    """
    k = x_codes.shape[-1]
    dtype = torch.float32 if k * bound < _FP32_EXACT_LIMIT else torch.float64
    return x_codes.to(dtype) @ w_codes.to(dtype).t()


def quantized_linear_reference(
    x2d: torch.Tensor,
    w_codes: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: torch.Tensor | None,
    clip: torch.Tensor,
    weight_bits: int,
    activation_bits: int,
) -> torch.Tensor:
    """y = Q_a(x) · Q_w(W)^T + b for x [M, K]; float32 output [M, N].

    ``w_codes``: unsigned weight codes [N, K] (any integer or integer-valued dtype);
    ``weight_scale`` / ``weight_zero_point`` / ``bias``: float32 [N]; ``clip``: per-row
    (α_lo, α_hi) [M, 2].
    """
    m, k = x2d.shape
    if w_codes.ndim != 2 or w_codes.shape[1] != k:
        raise ValueError(f"activations [M, {k}] do not fit weight codes {tuple(w_codes.shape)}")
    if clip.shape != (m, 2):
        raise ValueError(f"clip must be [{m}, 2], got {tuple(clip.shape)}")
    tq = quantize_tokens(x2d, clip[:, 0:1].float(), clip[:, 1:2].float(), activation_bits)
    bound = qmax(activation_bits) * qmax(weight_bits)
    acc = integer_matmul(tq.codes, w_codes, bound)
    x_sum = tq.codes.to(acc.dtype).sum(dim=1, keepdim=True)
    y = (acc - weight_zero_point.to(acc.dtype) * x_sum).float() * (tq.scale * weight_scale)
    if bias is not None:
        y = y + bias
    return y


def packed_linear_reference(
    x2d: torch.Tensor, layer: PackedLinearWeights, clip: torch.Tensor
) -> torch.Tensor:
    """``quantized_linear_reference`` on one stored layer (unpacks its codes)."""
    if x2d.ndim != 2 or x2d.shape[1] != layer.in_features:
        raise ValueError(
            f"{layer.name}: expected activations [M, {layer.in_features}], got {tuple(x2d.shape)}"
        )
    return quantized_linear_reference(
        x2d,
        layer.weight_codes().to(x2d.device),
        layer.weight_scale.to(x2d.device),
        layer.weight_zero_point.to(x2d.device),
        None if layer.bias is None else layer.bias.to(x2d.device),
        clip,
        layer.weight_bits,
        layer.activation_bits,
    )
