"""The integer contract's per-token step in Triton: one piece of code for every kernel.

For a block of tokens with extremes min_k x and max_k x and clip factors (α_lo, α_hi), exactly
the float32 expressions of ``qvgen.numerics.token_scale_zero``, with IEEE round-to-nearest
divisions (``tl.math.div_rn``) and half-up rounding floor(v + 0.5)::

    lo = min(α_lo · min_k x, 0)      hi = max(α_hi · max_k x, 0)
    s_x = max((hi − lo) / (2^b − 1), EPS)      z_x = clamp(round(−lo / s_x), 0, 2^b − 1)

The serving quantizer (``service/kernels/activation_quant.py``) and the training fake-quant
kernels (``training/quant/kernels/token_fake_quant.py``) both call it, so fake quantization
and serving derive each token's step and zero point from one place.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def token_scale_zero(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    clip_ptr, rows, stride_clip_m, row_ok, x_min, x_max,
    LEVELS: tl.constexpr, EPSILON: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """(α_lo, α_hi, lo, s_x, z_x) of a block of tokens from their extremes (module docstring)."""
    alpha_lo = tl.load(clip_ptr + rows * stride_clip_m, mask=row_ok, other=1.0)
    alpha_hi = tl.load(clip_ptr + rows * stride_clip_m + 1, mask=row_ok, other=1.0)
    lo = tl.minimum(alpha_lo * x_min, 0.0)
    hi = tl.maximum(alpha_hi * x_max, 0.0)
    levels = tl.full([BLOCK_M], LEVELS, tl.float32)
    scale = tl.maximum(tl.math.div_rn(hi - lo, levels), EPSILON)
    zero = tl.minimum(tl.maximum(tl.floor(tl.math.div_rn(-lo, scale) + 0.5), 0.0), levels)
    return alpha_lo, alpha_hi, lo, scale, zero
