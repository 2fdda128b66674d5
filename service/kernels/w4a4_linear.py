"""``W4A4Linear``: the quantized linear that serving runs, on a chosen kernel backend.

It holds one layer in format v1 (``qvgen.packed_layer.PackedLinearWeights``) and computes
y = Q_a(x) · Q_w(W)^T + b with the clip factors of the timestep group set by
``qvgen.timestep_groups.bind_timestep_groups``. Despite the name it serves every bit width of
the format (W3A3 included).
"""

from __future__ import annotations

import enum

import torch
from torch import nn

from qvgen.packed_layer import PackedLinearWeights
from service.kernels.reference import clip_rows, quantized_linear_reference


class KernelBackend(enum.Enum):
    """Which implementation computes the quantized product."""

    REFERENCE = "reference"  # pure PyTorch, exact integers; any device


class W4A4Linear(nn.Module):
    """A packed low-bit linear layer.

    Buffers: ``qweight`` uint8 [N, ⌈K/2⌉], ``weight_scale`` / ``weight_zero_point`` float32 [N],
    ``act_clip`` float32 [G, 2], ``bias`` float32 [N] (when present), and, on the reference
    backend, ``weight_codes`` int8 [N, K] unpacked once at construction.
    """

    qweight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    act_clip: torch.Tensor
    bias: torch.Tensor | None
    weight_codes: torch.Tensor

    def __init__(
        self, weights: PackedLinearWeights, backend: KernelBackend = KernelBackend.REFERENCE
    ) -> None:
        super().__init__()
        self.name = weights.name
        self.in_features = weights.in_features
        self.out_features = weights.out_features
        self.weight_bits = weights.weight_bits
        self.activation_bits = weights.activation_bits
        self.backend = backend
        self.register_buffer("qweight", weights.qweight)
        self.register_buffer("weight_scale", weights.weight_scale)
        self.register_buffer("weight_zero_point", weights.weight_zero_point)
        self.register_buffer("act_clip", weights.act_clip)
        self.register_buffer("bias", weights.bias)
        self.register_buffer(
            "weight_codes", weights.weight_codes().to(torch.int8), persistent=False
        )
        self._groups: torch.Tensor | None = None

    def packed(self) -> PackedLinearWeights:
        """The layer's tensors as a ``PackedLinearWeights`` (validated)."""
        return PackedLinearWeights(
            name=self.name,
            in_features=self.in_features,
            out_features=self.out_features,
            weight_bits=self.weight_bits,
            activation_bits=self.activation_bits,
            qweight=self.qweight,
            weight_scale=self.weight_scale,
            weight_zero_point=self.weight_zero_point,
            act_clip=self.act_clip,
            bias=self.bias,
        )

    def set_clip_group(self, groups: torch.Tensor) -> None:
        self._groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._groups is None:
            raise RuntimeError(
                f"{self.name}: no timestep group set; bind the transformer with "
                "qvgen.timestep_groups.bind_timestep_groups or call set_clip_group first"
            )
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        clip = clip_rows(self.act_clip, self._groups, self._rows_per_group(x))
        y = quantized_linear_reference(
            x2d,
            self.weight_codes,
            self.weight_scale,
            self.weight_zero_point,
            self.bias,
            clip,
            self.weight_bits,
            self.activation_bits,
        )
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def _rows_per_group(self, x: torch.Tensor) -> int:
        """Rows of x that share each entry of the current groups (one group per sample)."""
        rows = x.numel() // self.in_features
        assert self._groups is not None
        n = self._groups.numel()
        if n == 1:
            return rows
        if x.ndim < 3 or x.shape[0] != n:
            raise ValueError(
                f"{self.name}: {n} clip groups set for input of shape {tuple(x.shape)}; "
                "expected one group per sample of a [B, S, K] input"
            )
        return rows // n

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"W{self.weight_bits}A{self.activation_bits}, backend={self.backend.value}"
        )
