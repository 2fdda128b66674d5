"""The integer contract of a quantized linear layer, written once for training and serving.

Every quantizer in ``training.quant``, the exporter, the pure-PyTorch reference linear and the
Triton kernels compute exactly these expressions, in float32, in this order. Two rules make
them bit-reproducible on any backend:

* rounding is **half up**: ``round(v) = floor(v + 0.5)`` (not banker's rounding, which some
  kernel languages lack);
* divisions are IEEE round-to-nearest float32 divisions ``a / b`` (never ``a * (1 / b)``).

Weights (per output channel n, asymmetric, float zero point as in LSQ+)::

    q_w[n, k] = clamp(round(w[n, k] / s_w[n] + z_w[n]), 0, 2^b_w - 1)
    ŵ[n, k]   = s_w[n] · (q_w[n, k] − z_w[n])

Activations (per token m, asymmetric, dynamic; α_lo, α_hi ∈ (0, 1] are the clip factors of the
current timestep group)::

    lo[m] = min(α_lo · min_k x[m, k], 0)        hi[m] = max(α_hi · max_k x[m, k], 0)
    s_x[m] = max((hi[m] − lo[m]) / (2^b_a − 1), EPS)
    z_x[m] = clamp(round(−lo[m] / s_x[m]), 0, 2^b_a − 1)            (an integer)
    q_x[m, k] = clamp(round(x[m, k] / s_x[m]) + z_x[m], 0, 2^b_a − 1)
    c_x[m, k] = q_x[m, k] − z_x[m]                       (centred code, |c_x| ≤ 2^b_a − 1)
    x̂[m, k]  = s_x[m] · c_x[m, k]

The range always contains 0, so a zero activation is represented exactly and z_x needs no
clamping in practice; the clamp stays as a guard.

The quantized product then factors into one integer matmul and a per-(m, n) epilogue::

    y[m, n] = Σ_k x̂[m, k] ŵ[n, k] + b[n]
            = s_x[m] · s_w[n] · (Σ_k c_x[m, k] q_w[n, k] − z_w[n] · Σ_k c_x[m, k]) + b[n]

Σ_k c_x q_w is an exact integer (int32 on tensor cores); only the epilogue is floating point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

# A rounding function with round_half_up's forward values; training passes a straight-through
# variant so that fake quantization and serving share every expression below.
Rounding = Callable[[torch.Tensor], torch.Tensor]

# Smallest step size: keeps an all-zero token (or a constant weight row) from dividing by zero.
EPS = 1e-8
MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int, what: str) -> None:
    """Raise ``ValueError`` unless ``bits`` is an integer in [MIN_BITS, MAX_BITS]."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")


def qmax(bits: int) -> int:
    """Largest unsigned code of a ``bits``-bit quantizer: 2^bits − 1."""
    return (1 << bits) - 1


def divide(a: torch.Tensor, b: float) -> torch.Tensor:
    """The IEEE quotient a / b for a Python number b, on every device.

    PyTorch's CUDA kernel for ``tensor / scalar`` multiplies by the scalar's reciprocal, which
    misses the correctly rounded quotient by one ulp for some a; dividing by a tensor divides.
    """
    return a / torch.tensor(b, dtype=a.dtype, device=a.device)


def round_half_up(v: torch.Tensor) -> torch.Tensor:
    """floor(v + 0.5): the one rounding every backend reproduces exactly."""
    return torch.floor(v + 0.5)


class TokenQuant(NamedTuple):
    """Per-token quantization of activations [M, K] (all float32 except as noted).

    codes: centred codes c_x = q_x − z_x, [M, K] float32 holding integers in [−qmax, qmax].
    scale: s_x, [M, 1].
    zero_point: z_x, [M, 1] (integer valued).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor


def token_range(
    x: torch.Tensor, alpha_lo: torch.Tensor, alpha_hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped per-token range (lo ≤ 0 ≤ hi) of ``x`` [..., K]; α broadcast against [..., 1]."""
    x = x.float()
    lo = torch.clamp(alpha_lo * x.amin(dim=-1, keepdim=True), max=0.0)
    hi = torch.clamp(alpha_hi * x.amax(dim=-1, keepdim=True), min=0.0)
    return lo, hi


def token_scale_zero(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, rounding: Rounding = round_half_up
) -> tuple[torch.Tensor, torch.Tensor]:
    """s_x and z_x from a per-token range (see the module docstring)."""
    levels = qmax(bits)
    scale = torch.clamp(divide(hi - lo, levels), min=EPS)
    zero = torch.clamp(rounding(-lo / scale), 0, levels)
    return scale, zero


def quantize_tokens(
    x: torch.Tensor,
    alpha_lo: torch.Tensor,
    alpha_hi: torch.Tensor,
    bits: int,
    rounding: Rounding = round_half_up,
) -> TokenQuant:
    """Quantize activations [..., K] per token (last axis) with clip factors α_lo, α_hi.

    ``alpha_lo`` / ``alpha_hi`` are scalars or tensors broadcastable to [..., 1] (one pair per
    row lets one call serve a batch whose samples sit in different timestep groups).
    """
    x = x.float()
    lo, hi = token_range(x, alpha_lo, alpha_hi)
    scale, zero = token_scale_zero(lo, hi, bits, rounding)
    q = torch.clamp(rounding(x / scale) + zero, 0, qmax(bits))
    return TokenQuant(codes=q - zero, scale=scale, zero_point=zero)


def weight_codes(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    rounding: Rounding = round_half_up,
) -> torch.Tensor:
    """Unsigned weight codes q_w = clamp(round(w / s_w + z_w), 0, 2^b − 1), float32 [N, K].

    ``scale`` and ``zero`` are per output channel, shaped [N, 1].
    """
    return torch.clamp(rounding(w.float() / scale + zero), 0, qmax(bits))


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """ŵ = s_w · (q_w − z_w), float32 [N, K]."""
    return scale * (codes - zero)
