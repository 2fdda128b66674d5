"""LSQ+ weight quantizer: learnable per-channel scale and float zero point (the QVGen recipe).

Forward (``weight_base``): q_w = clamp(round(w / s + z), 0, q_max), ŵ = s · (q_w − z), with
straight-through rounding, so ∂ŵ/∂s = (q_w − z) − w/s inside the range and q_w − z outside it
(LSQ+), and ∂ŵ/∂z = −s inside, 0 outside.

Gradient scale: the gradients of s and z are multiplied by g = 1 / sqrt(K · q_max), K being the
elements per channel, so the step size learns at the rate of the weights (LSQ).

Initialisation (``mse_clip_search``): for clip ratios p = 1 − i/100, i = 0 … C − 1, shrink the
channel range to [p·min, p·max], set s = (p·max − p·min)/q_max, z = −p·min/s, and keep per
channel the p that minimises Σ_k |ŵ − w|^2.4.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qvgen.numerics import EPS, dequantize_weight, qmax, weight_codes
from training.quant.ste import grad_scale
from training.quant.weight_base import WeightQuantizer
from training.quant.weight_minmax import minmax_scale_zero


@torch.no_grad()
def mse_clip_search(
    weight: torch.Tensor, bits: int, candidates: int = 80, norm: float = 2.4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (s, z) [N, 1] minimising Σ|Q(w) − w|^norm over ``candidates`` clip ratios.

    One candidate at a time, so memory stays at a few copies of the weight whatever its size.
    """
    w = weight.detach().float()
    best_err = torch.full((w.shape[0], 1), math.inf, device=w.device)
    best_scale = torch.empty_like(best_err)
    best_zero = torch.empty_like(best_err)
    for i in range(candidates):
        scale, zero = minmax_scale_zero(w, bits, ratio=1.0 - i / 100)
        deq = dequantize_weight(weight_codes(w, scale, zero, bits), scale, zero)
        err = (deq - w).abs().pow(norm).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


class LSQPlusWeightQuantizer(WeightQuantizer):
    """Parameters ``scale`` and ``zero_point`` [N, 1] float32, learnable."""

    def __init__(
        self, weight: torch.Tensor, bits: int, candidates: int = 80, norm: float = 2.4
    ) -> None:
        super().__init__(bits)
        scale, zero = mse_clip_search(weight, bits, candidates, norm)
        self.scale = nn.Parameter(scale)
        self.zero_point = nn.Parameter(zero)
        self.grad_factor = 1.0 / math.sqrt(weight.shape[1] * qmax(bits))

    def effective_scale_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        # The clamp keeps a step size that training pushed through zero usable; export reads
        # the same clamped value.
        scale = torch.clamp(grad_scale(self.scale, self.grad_factor), min=EPS)
        return scale, grad_scale(self.zero_point, self.grad_factor)
