"""Per-token min-max activation quantizer: the post-training baseline (RTN).

No clipping: α_lo = α_hi = 1 for every group, so each token's full [min, max] (widened to
contain 0) is mapped onto the 2^b levels. Nothing is learnable.
"""

from __future__ import annotations

import torch

from training.quant.activation_base import ActivationQuantizer


class MinMaxActivationQuantizer(ActivationQuantizer):
    """Buffer ``clip_factors`` float32 [G, 2], all ones."""

    clip_factors: torch.Tensor

    def __init__(self, bits: int, groups: int) -> None:
        super().__init__(bits, groups)
        self.register_buffer("clip_factors", torch.ones(groups, 2, dtype=torch.float32))

    def clip_table(self) -> torch.Tensor:
        return self.clip_factors
