"""Round-to-nearest min-max weight quantizer: the post-training baseline (RTN).

Per output channel n, over the latent weight row w[n, :]::

    s[n] = max((max_k w − min_k w) / q_max, EPS),   z[n] = round(−min_k w / s[n])

The zero point is an integer, nothing is learnable, and the parameters are frozen at
construction: the latent weight is not trained under RTN.
"""

from __future__ import annotations

import torch

from qvgen.numerics import EPS, divide, qmax, round_half_up
from training.quant.weight_base import WeightQuantizer


def minmax_scale_zero(
    weight: torch.Tensor, bits: int, ratio: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, z) [N, 1] for the per-channel range [ratio·min, ratio·max]; z is left as a float."""
    w = weight.detach().float()
    lo = w.amin(dim=1, keepdim=True) * ratio
    hi = w.amax(dim=1, keepdim=True) * ratio
    scale = torch.clamp(divide(hi - lo, qmax(bits)), min=EPS)
    return scale, -lo / scale


class MinMaxWeightQuantizer(WeightQuantizer):
    """RTN: buffers ``scale`` and ``zero_point`` [N, 1] float32 (z integer-valued)."""

    def __init__(self, weight: torch.Tensor, bits: int) -> None:
        super().__init__(bits)
        scale, zero = minmax_scale_zero(weight, bits)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.clamp(round_half_up(zero), 0, qmax(bits)))
