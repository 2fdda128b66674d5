"""A whole ``QuantLinear`` call on the GPU as one autograd function.

Forward, with the values of the composed version (``QuantLinear`` on the eager path, or through
the separate fused quantizers) bit for bit up to the GEMM::

    α = sigmoid(ℓ)[g] (learned clip) or the fixed table [g]      per sample's timestep group g
    x̂ = Q_a(x; α)                                                 token kernel
    s = max(s_param, EPS) (LSQ+) or s_param,  z = z_param
    W' = Q_w(W; s, z) + L·diag(γ)·R                              weight kernel, Φ in float32
    y = x̂ W'ᵀ + b

Backward, written out (g_y = ∂ℒ/∂y)::

    ∂ℒ/∂x̂ = g_y W',   ∂ℒ/∂W' = g_yᵀ x̂,   ∂ℒ/∂b = Σ_m g_y
    ∂ℒ/∂W, ∂ℒ/∂s, ∂ℒ/∂z from the weight kernel's backward; LSQ+: ×f (LSQ's gradient scale),
        ∂ℒ/∂s_param = [s_param ≥ EPS] f ∂ℒ/∂s
    ∂ℒ/∂L = (∂ℒ/∂W' Rᵀ) diag(γ),   ∂ℒ/∂R = (L diag(γ))ᵀ ∂ℒ/∂W'
    ∂ℒ/∂x, ∂ℒ/∂α per token from the token kernel's backward; ∂ℒ/∂ℓ[g] = σ'(ℓ[g]) Σ over the
        tokens of the samples in group g

Why one function: composed, a layer call is about fifteen autograd nodes and as many small
operators around its three real kernels; 300 layers, each run forward, again in the checkpoint
recompute, and backward, made the QAT step wait on the host (``BENCHMARKS.md``). Here it is one
node, and the backward launches only what the formulas above need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from qvgen.numerics import EPS
from training.quant.kernels.token_fake_quant import (
    fake_quant_tokens_backward,
    fake_quant_tokens_forward,
)
from training.quant.kernels.weight_fake_quant import (
    fake_quant_weight_backward,
    fake_quant_weight_forward,
)


@dataclass(frozen=True)
class LayerSpec:
    """What a call needs besides its tensors.

    ``learned_clip``: the clip source holds logits (α = sigmoid); else the factors themselves.
    ``lsq_factor``: LSQ's gradient scale of s and z (and s clamped to ≥ EPS); None for a fixed
    (min-max) weight quantizer.
    """

    activation_bits: int
    weight_bits: int
    out_dtype: torch.dtype
    learned_clip: bool
    lsq_factor: float | None


def _per_row(clip: torch.Tensor, rows: int) -> torch.Tensor:
    """[B, 2] clip factors of B samples → [rows, 2], each sample's rows consecutive."""
    samples = clip.shape[0]
    if samples == 1:
        return clip.expand(rows, 2)
    return clip[:, None, :].expand(samples, rows // samples, 2).reshape(rows, 2)


class _QuantLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        clip_source: torch.Tensor,
        groups: torch.Tensor,
        weight: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        left: torch.Tensor | None,
        right: torch.Tensor | None,
        gamma: torch.Tensor | None,
        bias: torch.Tensor | None,
        spec: LayerSpec,
    ) -> torch.Tensor:
        k = x.shape[-1]
        x2d = x.reshape(-1, k)
        if x2d.stride(1) != 1:
            x2d = x2d.contiguous()
        table = torch.sigmoid(clip_source) if spec.learned_clip else clip_source
        clip = _per_row(table[groups], x2d.shape[0])
        x_hat, stats = fake_quant_tokens_forward(x2d, clip, spec.activation_bits, spec.out_dtype)
        step = torch.clamp(scale, min=EPS) if spec.lsq_factor is not None else scale
        scaled_left = None
        delta = None
        if left is not None and right is not None and gamma is not None:
            # Φ in float32 also under autocast: it is added to Q_w(W) before the one rounding.
            with torch.autocast(x.device.type, enabled=False):
                scaled_left = left * gamma
                delta = scaled_left @ right
        w_eff = fake_quant_weight_forward(
            weight, step, zero, spec.weight_bits, spec.out_dtype, delta
        )
        y = F.linear(x_hat, w_eff, None if bias is None else bias.to(spec.out_dtype))
        ctx.save_for_backward(
            x2d, clip, stats, x_hat, w_eff, weight, scale, step, zero, table, groups,
            scaled_left, right, gamma,
        )  # fmt: skip
        ctx.spec = spec
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (x2d, clip, stats, x_hat, w_eff, weight, scale, step, zero, table, groups,
         scaled_left, right, gamma) = ctx.saved_tensors  # fmt: skip
        spec: LayerSpec = ctx.spec
        needs = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1]).to(w_eff.dtype)
        d_bias = g.sum(0, dtype=torch.float32) if needs[9] else None
        d_weff = g.t() @ x_hat
        d_weight, d_step, d_zero = fake_quant_weight_backward(
            weight, d_weff, step, zero, spec.weight_bits
        )
        d_scale = d_zero_param = None
        if spec.lsq_factor is not None:
            f = spec.lsq_factor
            d_scale = (d_step.view_as(scale) * f).masked_fill_(scale < EPS, 0.0)
            d_zero_param = d_zero.view_as(zero) * f
        d_left = d_right = None
        if scaled_left is not None:
            d_delta = d_weff.float()
            d_left = (d_delta @ right.t()) * gamma if needs[6] else None
            d_right = scaled_left.t() @ d_delta if needs[7] else None
        d_x2d, d_clip = fake_quant_tokens_backward(
            x2d, g @ w_eff, clip, stats, spec.activation_bits
        )
        d_source = None
        if needs[1]:
            samples = groups.shape[0]
            per_sample = d_clip.view(samples, -1, 2).sum(1)
            d_table = torch.zeros_like(table).index_add_(0, groups, per_sample)
            d_source = d_table * table * (1.0 - table) if spec.learned_clip else d_table
        return (
            d_x2d.view(ctx.x_shape).to(ctx.x_dtype),
            d_source,
            None,
            d_weight if needs[3] else None,
            d_scale if needs[4] else None,
            d_zero_param if needs[5] else None,
            d_left,
            d_right,
            None,
            d_bias,
            None,
        )


def quant_linear(
    x: torch.Tensor,
    clip_source: torch.Tensor,
    groups: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    phi: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    bias: torch.Tensor | None,
    spec: LayerSpec,
) -> torch.Tensor:
    """y = Q_a(x)·(Q_w(W) + Φ)ᵀ + b for x [..., K]; ``groups`` int64 [B] (or [1]) on x's
    device; ``phi`` (L, R, γ) or None. Gradients reach every tensor but ``groups`` and γ."""
    if groups.shape[0] > 1 and (x.ndim < 2 or x.shape[0] != groups.shape[0]):
        raise ValueError(
            f"{groups.shape[0]} clip groups set for an input of shape {tuple(x.shape)}"
        )
    left, right, gamma = phi if phi is not None else (None, None, None)
    out: torch.Tensor = _QuantLinearFunction.apply(
        x, clip_source, groups, weight, scale, zero, left, right, gamma, bias, spec
    )
    return out
