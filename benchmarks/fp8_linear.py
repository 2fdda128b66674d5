"""The FP8 rowwise peer: what a user would pick instead of W4A4 on Hopper.

Every linear our W4A4 model quantizes (``qvgen.layer_policy.LayerPolicy``) becomes an FP8 layer
with dynamic per-token activation scales and per-output-channel weight scales::

    s_x[m] = max_k |x[m, k]| / 448        x_q = e4m3(x / s_x)          (per call)
    s_w[n] = max_k |w[n, k]| / 448        w_q = e4m3(w / s_w)          (once)
    y      = (x_q · w_qᵀ) · s_x s_wᵀ + b     torch._scaled_mm, bf16 out, fast accumulation

torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` is the same method;
it is used where torchao imports, else ``Fp8RowwiseLinear`` below. Under ``torch.compile``,
inductor fuses the activation scaling into the op that produces x, as it does for torchao.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from qvgen.layer_policy import LayerPolicy
from qvgen.linear_swap import swap_linears

logger = logging.getLogger(__name__)

E4M3_MAX = 448.0
# Smallest scale: an all-zero row would divide by zero.
_MIN_SCALE = 1e-12


class Fp8RowwiseLinear(nn.Module):
    """y = x · wᵀ + b through e4m3 codes: ``weight`` float8_e4m3fn [N, K] (row-major, so
    ``weight.t()`` is the column-major operand ``_scaled_mm`` wants), ``weight_scale`` float32
    [1, N], ``bias`` bf16 [N] or None."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=_MIN_SCALE)
        self.register_buffer("weight", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features)
        x_scale = (x2d.abs().amax(dim=1, keepdim=True).float() / E4M3_MAX).clamp(min=_MIN_SCALE)
        x_q = (x2d.float() / x_scale).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(
            x_q,
            self.weight.t(),
            scale_a=x_scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def to_fp8_rowwise(model: nn.Module, policy: LayerPolicy | None = None) -> str:
    """Swap the policy's linears of ``model`` for FP8 rowwise ones, in place; returns which
    implementation did it ("torchao <version>" or "qvgen Fp8RowwiseLinear")."""
    policy = policy or LayerPolicy()
    selected = {
        name for name, m in model.named_modules() if type(m) is nn.Linear and policy.selects(name)
    }
    try:
        import torchao
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError:
        swap_linears(model, selected, lambda _name, linear: Fp8RowwiseLinear(linear))
        return "qvgen Fp8RowwiseLinear"
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    quantize_(model, config, filter_fn=lambda _m, name: name in selected)
    return f"torchao {torchao.__version__}"
