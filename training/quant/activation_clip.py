"""Per-token activation quantizer with learnable clipping per timestep group (QVGen recipe).

The clip factors are sigmoids of learnable logits, one (lower, upper) pair per timestep group::

    α_lo[g] = sigmoid(ℓ_lo[g]),   α_hi[g] = sigmoid(ℓ_hi[g]),   initialised at α = clip_init

They scale the token's measured minimum and maximum before the step size is derived
(``activation_base``), so the gradient reaches ℓ through s and z (straight-through rounding).
The QVGen recipe trains ℓ with a learning rate of 1e-2, far above the weights'.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.quant.activation_base import ActivationQuantizer


class LearnedClipActivationQuantizer(ActivationQuantizer):
    """Parameter ``clip_logits`` float32 [G, 2]: column 0 lower, column 1 upper."""

    def __init__(self, bits: int, groups: int, clip_init: float = 0.95) -> None:
        super().__init__(bits, groups)
        if not 0.0 < clip_init < 1.0:
            raise ValueError(f"clip_init must lie in (0, 1) for a sigmoid logit, got {clip_init}")
        logit = math.log(clip_init / (1.0 - clip_init))
        self.clip_logits = nn.Parameter(torch.full((groups, 2), logit, dtype=torch.float32))

    def clip_table(self) -> torch.Tensor:
        return torch.sigmoid(self.clip_logits.float())
