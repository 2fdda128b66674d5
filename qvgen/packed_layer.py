"""One quantized linear layer as it is stored and served: packed codes plus per-channel numbers."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from qvgen.numerics import check_bits
from qvgen.packing import packed_columns, unpack_codes


@dataclass(frozen=True)
class PackedLinearWeights:
    """The tensors of one quantized linear (format v1, ``docs/checkpoint-format.md``).

    qweight: uint8 [N, ⌈K/2⌉] (bits ≤ 4) or [N, K] — packed weight codes q_w.
    weight_scale: float32 [N] — s_w.
    weight_zero_point: float32 [N] — z_w (float).
    act_clip: float32 [G, 2] — (α_lo, α_hi) per timestep group, each in (0, 1].
    bias: float32 [N] or None.
    """

    name: str
    in_features: int
    out_features: int
    weight_bits: int
    activation_bits: int
    qweight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    act_clip: torch.Tensor
    bias: torch.Tensor | None

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, f"{self.name}: weight_bits")
        check_bits(self.activation_bits, f"{self.name}: activation_bits")
        n, k = self.out_features, self.in_features
        expected = {
            "qweight": ((n, packed_columns(k, self.weight_bits)), torch.uint8),
            "weight_scale": ((n,), torch.float32),
            "weight_zero_point": ((n,), torch.float32),
        }
        if self.bias is not None:
            expected["bias"] = ((n,), torch.float32)
        for field, (shape, dtype) in expected.items():
            t = getattr(self, field)
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(
                    f"{self.name}.{field}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}"
                )
        clip = self.act_clip
        if clip.ndim != 2 or clip.shape[1] != 2 or clip.dtype != torch.float32:
            raise ValueError(
                f"{self.name}.act_clip: expected float32 [G, 2], got {clip.dtype} {tuple(clip.shape)}"
            )
        for field in ("weight_scale", "weight_zero_point", "act_clip", "bias"):
            t = getattr(self, field)
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{self.name}.{field} holds NaN or inf")
        if not bool((self.weight_scale > 0).all()):
            raise ValueError(f"{self.name}.weight_scale must be > 0 in every channel")
        if not bool(((clip > 0) & (clip <= 1)).all()):
            raise ValueError(f"{self.name}.act_clip factors must lie in (0, 1]")

    @property
    def clip_groups(self) -> int:
        return int(self.act_clip.shape[0])

    def to(self, device: torch.device | str) -> PackedLinearWeights:
        """A copy with every tensor on ``device`` (dtypes unchanged)."""
        return replace(
            self,
            qweight=self.qweight.to(device),
            weight_scale=self.weight_scale.to(device),
            weight_zero_point=self.weight_zero_point.to(device),
            act_clip=self.act_clip.to(device),
            bias=None if self.bias is None else self.bias.to(device),
        )

    def weight_codes(self) -> torch.Tensor:
        """Unpacked codes q_w, int32 [N, K]."""
        return unpack_codes(self.qweight, self.in_features, self.weight_bits)
