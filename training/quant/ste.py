"""Autograd helpers of quantization-aware training.

Both keep the forward value bit-identical to the serving arithmetic (``qvgen.numerics``) and
only change the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from qvgen.numerics import round_half_up


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, v: torch.Tensor) -> torch.Tensor:
        return round_half_up(v)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """floor(v + 0.5) forward; identity gradient (the straight-through estimator)."""
    out: torch.Tensor = _RoundSTE.apply(v)
    return out


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return v.view_as(v)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def grad_scale(v: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``factor`` (LSQ's step-size gradient scale).

    A custom function rather than the usual ``v·g + (v − v·g).detach()`` trick, whose forward
    value can differ from ``v`` in the last bit and so break exact parity with serving.
    """
    out: torch.Tensor = _GradScale.apply(v, factor)
    return out
