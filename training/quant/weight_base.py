"""What every weight quantizer provides: a per-channel scale and zero point over latent weights.

For output channel n, with b bits and q_max = 2^b − 1 (``qvgen.numerics``)::

    q_w[n, k] = clamp(round(w[n, k] / s[n] + z[n]), 0, q_max),   ŵ = s[n] · (q_w − z[n])

Subclasses decide how ``scale`` and ``zero_point`` ([N, 1] float32 each) are found and whether
they learn.
"""

from __future__ import annotations

import torch
from torch import nn

from qvgen.numerics import Rounding, check_bits, dequantize_weight, round_half_up, weight_codes
from training.quant.kernels.dispatch import use_triton
from training.quant.ste import round_ste


class WeightQuantizer(nn.Module):
    """Per-output-channel asymmetric fake quantizer. Attributes: ``bits``; tensors
    ``scale`` and ``zero_point`` [N, 1] float32 (parameters or buffers, by subclass)."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        check_bits(bits, "weight bits")
        self.bits = bits

    def effective_scale_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, z) as the forward pass uses them; subclasses may scale their gradients."""
        return self.scale, self.zero_point

    def codes(self, weight: torch.Tensor, rounding: Rounding = round_half_up) -> torch.Tensor:
        """Unsigned codes q_w, float32 [N, K] holding integers."""
        s, z = self.effective_scale_zero()
        return weight_codes(weight, s, z, self.bits, rounding)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """ŵ with straight-through rounding; float32 [N, K]."""
        s, z = self.effective_scale_zero()
        return dequantize_weight(weight_codes(weight, s, z, self.bits, round_ste), s, z)

    def fake_quant(
        self, weight: torch.Tensor, out_dtype: torch.dtype, addend: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ŵ + ``addend`` (float32 [N, K] or None), rounded once to ``out_dtype``: the fused
        kernels where ``dispatch`` picks them, else ``forward``; the same values either way."""
        if not use_triton(weight):
            w_hat = self(weight)
            return (w_hat if addend is None else w_hat + addend).to(out_dtype)
        from training.quant.kernels.autograd import fake_quant_weight

        s, z = self.effective_scale_zero()
        return fake_quant_weight(weight, s, z, self.bits, out_dtype, addend)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.scale.shape[0]}"
