"""``QuantLinear``: the trainable fake-quantized linear layer of QVGen.

    y = Q_a(x) · (Q_w(W) + L · diag(γ) · R)ᵀ + b

W is the latent full-precision weight, Q_w its per-channel quantizer (``weight_lsq`` or
``weight_minmax``), Q_a the per-token activation quantizer (``activation_clip`` or
``activation_minmax``) and L·diag(γ)·R the auxiliary module Φ (``phi``), which sees the
quantized input and disappears during rank decay. With Φ gone the layer computes exactly what
the packed W4A4 layer of the service computes (``qvgen.numerics``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.quant.activation_base import ActivationQuantizer
from training.quant.activation_clip import LearnedClipActivationQuantizer
from training.quant.activation_minmax import MinMaxActivationQuantizer
from training.quant.config import ActivationQuantizerKind, QuantScheme, WeightQuantizerKind
from training.quant.phi import LowRankBranch
from training.quant.weight_base import WeightQuantizer
from training.quant.weight_lsq import LSQPlusWeightQuantizer
from training.quant.weight_minmax import MinMaxWeightQuantizer

_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the layer's GEMM runs in: autocast's where it is on (F.linear would cast to it
    anyway: producing x̂ and Q_w(W) + Φ in it directly saves two casts of full tensors and gives
    the same values), else x's half precision, else float32."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype if x.dtype in _HALF else torch.float32


def build_weight_quantizer(weight: torch.Tensor, scheme: QuantScheme) -> WeightQuantizer:
    if scheme.weight_quantizer is WeightQuantizerKind.LSQ_PLUS:
        return LSQPlusWeightQuantizer(
            weight, scheme.weight_bits, scheme.mse_candidates, scheme.mse_norm
        )
    return MinMaxWeightQuantizer(weight, scheme.weight_bits)


def build_activation_quantizer(scheme: QuantScheme) -> ActivationQuantizer:
    if scheme.activation_quantizer is ActivationQuantizerKind.LEARNED_CLIP:
        return LearnedClipActivationQuantizer(
            scheme.activation_bits, scheme.clip_groups, scheme.clip_init
        )
    return MinMaxActivationQuantizer(scheme.activation_bits, scheme.clip_groups)


class QuantLinear(nn.Module):
    """Fake-quantized linear with Φ.

    Parameters: ``weight`` [N, K] (latent), ``bias`` [N] or None; submodules
    ``weight_quantizer``, ``act_quantizer`` and ``phi`` (a ``LowRankBranch`` or None).
    """

    def __init__(
        self,
        name: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        scheme: QuantScheme,
        rank: int,
    ) -> None:
        super().__init__()
        if not bool(torch.isfinite(weight).all()):
            raise ValueError(f"{name}: weight holds NaN or inf")
        if bias is not None and not bool(torch.isfinite(bias).all()):
            raise ValueError(f"{name}: bias holds NaN or inf")
        self.name = name
        self.scheme = scheme
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.weight_quantizer = build_weight_quantizer(self.weight, scheme)
        self.act_quantizer = build_activation_quantizer(scheme)
        self.phi: LowRankBranch | None = None
        if rank > 0:
            with torch.no_grad():
                error = self.weight.float() - self.weight_quantizer(self.weight)
            self.phi = LowRankBranch.from_error(error, rank)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, scheme: QuantScheme, rank: int, name: str
    ) -> QuantLinear:
        return cls(name, linear.weight, linear.bias, scheme, rank)

    @property
    def phi_rank(self) -> int:
        return 0 if self.phi is None else self.phi.rank

    def set_clip_group(self, groups: torch.Tensor) -> None:
        self.act_quantizer.set_clip_group(groups)

    def decay_rank(self, keep: int) -> None:
        """Drop Φ's components from index ``keep`` on and re-decompose the rest (``phi``)."""
        if self.phi is None:
            raise ValueError(f"{self.name}: Φ is already gone")
        self.phi = self.phi.truncated(keep)

    def quantization_error(self) -> torch.Tensor:
        """‖W − Q_w(W) − Φ‖_F, the part of the weight error Φ does not absorb."""
        with torch.no_grad():
            err = self.weight.float() - self.weight_quantizer(self.weight)
            if self.phi is not None:
                err = err - self.phi.delta_weight()
            return torch.linalg.matrix_norm(err)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self.name}: expected input [..., {self.in_features}], got {tuple(x.shape)}"
            )
        compute = _compute_dtype(x)
        x_hat = self.act_quantizer.fake_quant(x, compute)
        # Q_w(W) + Φ as one weight, rounded once: one GEMM over the activations instead of the
        # main one plus Φ's two thin ones and an addition, and ∂ℒ/∂Φ = ∂ℒ/∂(Q_w(W) + Φ).
        phi = None if self.phi is None else self.phi.delta_weight()
        weight = self.weight_quantizer.fake_quant(self.weight, compute, phi)
        bias = None if self.bias is None else self.bias.to(compute)
        return F.linear(x_hat, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"{self.name}: in_features={self.in_features}, out_features={self.out_features}, "
            f"{self.scheme.label}, phi_rank={self.phi_rank}"
        )
