"""What every activation quantizer provides: per-token dynamic fake quantization.

For a token (row) x[m, :] with clip factors (α_lo, α_hi) of its timestep group
(``qvgen.numerics``)::

    lo = min(α_lo · min_k x, 0),  hi = max(α_hi · max_k x, 0)
    s = max((hi − lo) / q_max, EPS),  z = clamp(round(−lo / s), 0, q_max)   (integer)
    x̂ = s · (clamp(round(x / s) + z, 0, q_max) − z)

The range is measured on every call (dynamic); only the clip factors are stored, one pair per
timestep group. The group of each sample is set before the forward call through
``set_clip_group`` (``qvgen.timestep_groups.bind_timestep_groups`` does it from the timestep).
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from qvgen.device_copy import shared_copy
from qvgen.numerics import check_bits, quantize_tokens
from qvgen.timestep_groups import clip_rows
from training.quant.kernels.dispatch import use_triton
from training.quant.ste import round_ste


class ActivationQuantizer(nn.Module, abc.ABC):
    """Per-token asymmetric dynamic fake quantizer with a [G, 2] clip table."""

    def __init__(self, bits: int, groups: int) -> None:
        super().__init__()
        check_bits(bits, "activation bits")
        if groups < 1:
            raise ValueError(f"clip groups must be ≥ 1, got {groups}")
        self.bits = bits
        self.groups = groups
        self._current: torch.Tensor | None = None

    @abc.abstractmethod
    def clip_table(self) -> torch.Tensor:
        """(α_lo, α_hi) per group, float32 [G, 2], each in (0, 1]."""

    def set_clip_group(self, groups: torch.Tensor) -> None:
        """Groups of the samples of the next calls: int64 [B] (or [1] for the whole batch)."""
        g = torch.as_tensor(groups, dtype=torch.int64).reshape(-1)
        if g.numel() == 0 or int(g.min()) < 0 or int(g.max()) >= self.groups:
            raise ValueError(f"clip group {g.tolist()} outside [0, {self.groups - 1}]")
        self._current = g

    def _groups(self) -> torch.Tensor:
        if self._current is None:
            raise RuntimeError(
                "no timestep group set: call set_clip_group (or bind_timestep_groups) first"
            )
        return self._current

    def _samples(self, x: torch.Tensor) -> int:
        """How many samples the set groups cover: B, checked against x's leading axis, or 1."""
        samples = self._groups().shape[0]
        if samples > 1 and (x.ndim < 2 or x.shape[0] != samples):
            raise ValueError(f"{samples} clip groups set for an input of shape {tuple(x.shape)}")
        return samples

    def _alphas(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        samples = self._samples(x)
        # Every layer of a forward call receives the same groups tensor: one copy serves all.
        table = self.clip_table()[shared_copy(self._groups(), x.device)]  # [B, 2]
        shape = (samples,) + (1,) * (x.ndim - 1) if samples > 1 else (1,) * x.ndim
        return table[:, 0].reshape(shape), table[:, 1].reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ (float32, same shape as x) with straight-through rounding."""
        alpha_lo, alpha_hi = self._alphas(x)
        tq = quantize_tokens(x, alpha_lo, alpha_hi, self.bits, round_ste)
        return tq.codes * tq.scale

    def fake_quant(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """x̂ in ``out_dtype``: the fused kernels where ``dispatch`` picks them, else ``forward``.

        The values are the same either way: x̂ is computed in float32 and rounded once.
        """
        if not use_triton(x):
            return self(x).to(out_dtype)
        from training.quant.kernels.autograd import fake_quant_tokens

        rows = x.numel() // x.shape[-1]
        clip = clip_rows(self.clip_table(), self._groups(), rows // self._samples(x))
        return fake_quant_tokens(x, clip, self.bits, out_dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, groups={self.groups}"
