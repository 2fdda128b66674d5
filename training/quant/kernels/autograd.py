"""Autograd functions around the fused fake-quant kernels (``token_fake_quant``,
``weight_fake_quant``). Their backward passes are the kernels' own; everything that produces
their inputs (clip factors from logits, LSQ's gradient scale) stays in the autograd graph."""

from __future__ import annotations

from typing import Any

import torch

from training.quant.kernels.token_fake_quant import (
    fake_quant_tokens_backward,
    fake_quant_tokens_forward,
)
from training.quant.kernels.weight_fake_quant import (
    fake_quant_weight_backward,
    fake_quant_weight_forward,
)


class _TokenFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x2d: torch.Tensor, clip: torch.Tensor, bits: int, out_dtype: torch.dtype
    ) -> torch.Tensor:
        out, stats = fake_quant_tokens_forward(x2d, clip, bits, out_dtype)
        ctx.save_for_backward(x2d, clip, stats)
        ctx.bits = bits
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x2d, clip, stats = ctx.saved_tensors
        dx, dclip = fake_quant_tokens_backward(x2d, grad, clip, stats, ctx.bits)
        return dx, dclip if ctx.needs_input_grad[1] else None, None, None


def fake_quant_tokens(
    x: torch.Tensor, clip: torch.Tensor, bits: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """x̂ of ``x`` [..., K] quantized per token with per-token clip factors ``clip`` [M, 2]
    (M = x.numel() / K, rows in x's order; ``qvgen.timestep_groups.clip_rows``)."""
    k = x.shape[-1]
    x2d = x.reshape(-1, k)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    out: torch.Tensor = _TokenFakeQuant.apply(x2d, clip.float(), bits, out_dtype)
    return out.view(x.shape)


class _WeightFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        weight: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        addend: torch.Tensor | None,
        bits: int,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, scale, zero)
        ctx.bits = bits
        return fake_quant_weight_forward(weight, scale, zero, bits, out_dtype, addend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weight, scale, zero = ctx.saved_tensors
        dw, dscale, dzero = fake_quant_weight_backward(weight, grad, scale, zero, ctx.bits)
        return (
            dw if ctx.needs_input_grad[0] else None,
            dscale.view_as(scale) if ctx.needs_input_grad[1] else None,
            dzero.view_as(zero) if ctx.needs_input_grad[2] else None,
            grad.float() if ctx.needs_input_grad[3] else None,
            None,
            None,
        )


def fake_quant_weight(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    out_dtype: torch.dtype,
    addend: torch.Tensor | None = None,
) -> torch.Tensor:
    """ŵ (+ ``addend``, float32 [N, K]) [N, K] in ``out_dtype`` with per-channel s, z [N, 1];
    gradients to all four."""
    out: torch.Tensor = _WeightFakeQuant.apply(weight, scale, zero, addend, bits, out_dtype)
    return out
