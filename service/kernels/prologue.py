"""A quantized linear's input handed over as the op that makes it, so the layer can fuse the two.

In a Wan block each quantized linear's input is made by one cheap op on a tensor already in
memory: the norm + modulation before self-attention, cross-attention and FFN-up, the GELU
before FFN-down. Computed on its own, that op writes the activation and the layer's quantizer
reads it back. A ``Prologue`` instead carries the op's operands to the layer; a Triton layer
(``TritonLowBitLinear``, ``FusedLowBitLinear``) then runs one kernel that computes the
activation and quantizes it (``service.kernels.prologue_quant``), the activation never leaving
registers.

Each prologue has three views of the same activation a:

* ``materialize()``: diffusers' own expressions, the reference (what the unfused model feeds
  the layer);
* ``quantize(clips, bits, block_k)``: the fused kernel's codes, scales and sums — exactly
  ``qvgen.numerics.quantize_tokens`` of the kernel's a;
* ``activation()``: the kernel's a itself (for checks), equal to ``materialize()`` within the
  bound stated in ``prologue_quant``.

Only the Triton layers accept a prologue; ``wan_block_prologues`` materializes it for any other
consumer. This module imports no Triton, so layers that check for a prologue load without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from service.kernels.weight_layout import MAX_KERNEL_BITS

if TYPE_CHECKING:
    from service.kernels.activation_quant import QuantizedActivations


class NormModulation(NamedTuple):
    """a = (norm(source.float()) · (1 + scale) + shift).type_as(source), as a Wan block computes
    each attention's and the FFN's input; without modulation a = norm(source.float()).type_as(
    source) (cross-attention's).

    source: [B, S, K] (any leading shape) in the model dtype. norm: a diffusers ``FP32LayerNorm``
    (float32 LayerNorm over the last axis; weight and bias when affine). shift, scale: float32
    [B, 1, K] (one per sample) or [B, S, K] (one per token), or both None.
    """

    source: torch.Tensor
    norm: nn.LayerNorm
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def materialize(self) -> torch.Tensor:
        normed = self.norm(self.source.float())
        if self.shift is not None and self.scale is not None:
            normed = normed * (1 + self.scale) + self.shift
        return normed.type_as(self.source)

    def quantize(self, clips: torch.Tensor, bits: int, block_k: int) -> QuantizedActivations:
        """Codes of a for each clip table ``clips`` [C, M, 2] (M = source rows)."""
        return self._run(clips, bits, block_k, store_activation=False)[0]

    def activation(self) -> torch.Tensor:
        """The kernel's a, [..., K] in the source dtype."""
        act = self._run(_unit_clips(self.source), MAX_KERNEL_BITS, 1, store_activation=True)[1]
        assert act is not None
        return act.reshape(self.source.shape)

    def _run(
        self, clips: torch.Tensor, bits: int, block_k: int, store_activation: bool
    ) -> tuple[QuantizedActivations, torch.Tensor | None]:
        from service.kernels.prologue_quant import norm_modulation_quantize

        k = self.source.shape[-1]
        if tuple(self.norm.normalized_shape) != (k,):
            raise ValueError(
                f"norm over {tuple(self.norm.normalized_shape)} does not fit input width {k}"
            )
        return norm_modulation_quantize(
            self.source.reshape(-1, k),
            self.norm.weight,
            self.norm.bias,
            self.norm.eps,
            self.shift,
            self.scale,
            clips,
            bits,
            block_k,
            store_activation=store_activation,
        )


class GeluTanh(NamedTuple):
    """a = GELU(source) with the tanh approximation, in the source's dtype (FFN-down's input).

    source: FFN-up's output, [..., K] in the model dtype.
    """

    source: torch.Tensor

    def materialize(self) -> torch.Tensor:
        return F.gelu(self.source, approximate="tanh")

    def quantize(self, clips: torch.Tensor, bits: int, block_k: int) -> QuantizedActivations:
        """Codes of a for each clip table ``clips`` [C, M, 2] (M = source rows)."""
        from service.kernels.prologue_quant import gelu_quantize

        k = self.source.shape[-1]
        return gelu_quantize(self.source.reshape(-1, k), clips, bits, block_k)[0]

    def activation(self) -> torch.Tensor:
        """The kernel's a, [..., K] in the source dtype."""
        from service.kernels.prologue_quant import gelu_quantize

        h2d = self.source.reshape(-1, self.source.shape[-1])
        act = gelu_quantize(h2d, _unit_clips(h2d), MAX_KERNEL_BITS, 1, store_activation=True)[1]
        assert act is not None
        return act.reshape(self.source.shape)


def _unit_clips(source: torch.Tensor) -> torch.Tensor:
    """Clip factors 1 for every row: the codes that come with ``activation()`` go unread."""
    rows = source.numel() // source.shape[-1]
    return torch.ones((1, 1, 2), device=source.device).expand(1, rows, 2)


# ``isinstance(x, PROLOGUES)`` tells a layer it was handed a prologue.
PROLOGUES = (NormModulation, GeluTanh)
Prologue = NormModulation | GeluTanh
