"""The QVGen authors' release, restated from their published layout and math, not from ours.

Their recipe replaces **every** ``nn.Linear`` of the transformer (embedders and norm linears
included) by a quantized linear whose state holds, under the layer's path ``P``:

    P.w, P.b                                  latent weight [out, in], bias [out]
    P.wquantizer.scale, P.wquantizer.zero_point   [out, 1]: LSQ+ per channel, integer zero point
    P.aquantizer.lower, P.aquantizer.upper    [G]: one clip logit per timestep group
    P.loraA.weight [r, in], P.loraB.weight [out, r]   optional, merged as W ← W + B·A

and computes, for the group g it is told to use, in the model's dtype:

    ŵ   = s · (clamp(round(W / s + z), 0, 2^b − 1) − z)                 round half to even
    lo  = min(clip_ratio · σ(lower[g]) · min_k x, 0)     hi = max(clip_ratio · σ(upper[g]) · max_k x, 0)
    s_x = (hi − lo) / (2^b − 1)      z_x = round(−lo / s_x)
    x̂   = s_x · (clamp(round(x / s_x) + z_x, 0, 2^b − 1) − z_x)
    y   = x̂ · ŵᵀ + b

with clip_ratio = 0.95 in their inference scripts. Nothing here imports qvgen's quantizers.
"""

from __future__ import annotations

import torch
from torch import nn

CLIP_RATIO = 0.95
GROUPS = 50


class ReleaseLinear(nn.Module):
    """One quantized linear of the release, with its key names."""

    def __init__(
        self, linear: nn.Linear, bits: int, generator: torch.Generator, lora_rank: int
    ) -> None:
        super().__init__()
        self.bits = bits
        self.group = 0
        weight = linear.weight.detach().clone()
        levels = 2**bits - 1
        self.w = nn.Parameter(weight)
        self.b = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.wquantizer = nn.Module()
        lo = weight.amin(dim=1, keepdim=True).clamp(max=0)
        hi = weight.amax(dim=1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / levels).clamp(min=1e-8)
        self.wquantizer.register_buffer("scale", scale)
        self.wquantizer.register_buffer("zero_point", torch.round(-lo / scale))
        self.aquantizer = nn.Module()
        logit = torch.logit(torch.tensor(0.9))
        for side in ("lower", "upper"):
            values = logit + 0.5 * torch.randn(GROUPS, generator=generator)
            self.aquantizer.register_buffer(side, values)
        self.loraA: nn.Linear | None = None
        self.loraB: nn.Linear | None = None
        if lora_rank:
            self.loraA = nn.Linear(linear.in_features, lora_rank, bias=False)
            self.loraB = nn.Linear(lora_rank, linear.out_features, bias=False)
            with torch.no_grad():
                self.loraA.weight.copy_(
                    0.05 * torch.randn(self.loraA.weight.shape, generator=generator)
                )
                self.loraB.weight.copy_(
                    0.05 * torch.randn(self.loraB.weight.shape, generator=generator)
                )

    def merged_weight(self) -> torch.Tensor:
        w = self.w
        if self.loraA is not None and self.loraB is not None:
            w = self.loraB.weight @ self.loraA.weight + w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        s, z = self.wquantizer.scale, self.wquantizer.zero_point
        w_hat = s * (torch.clamp(torch.round(self.merged_weight() / s + z), 0, levels) - z)
        lower = CLIP_RATIO * torch.sigmoid(self.aquantizer.lower[self.group])
        upper = CLIP_RATIO * torch.sigmoid(self.aquantizer.upper[self.group])
        lo = torch.clamp(lower * x.amin(dim=-1, keepdim=True), max=0)
        hi = torch.clamp(upper * x.amax(dim=-1, keepdim=True), min=0)
        s_x = torch.clamp((hi - lo) / levels, min=1e-8)
        z_x = torch.round(-lo / s_x)
        x_hat = s_x * (torch.clamp(torch.round(x / s_x) + z_x, 0, levels) - z_x)
        y = x_hat @ w_hat.t()
        return y if self.b is None else y + self.b


def quantize_everything(
    model: nn.Module, bits: int, lora_rank: int = 0, seed: int = 0
) -> list[ReleaseLinear]:
    """Replace every ``nn.Linear`` of ``model`` by a ``ReleaseLinear`` (their recipe)."""
    generator = torch.Generator().manual_seed(seed)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    layers = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = ReleaseLinear(getattr(parent, child), bits, generator, lora_rank)
        setattr(parent, child, layer)
        layers.append(layer)
    return layers


def set_group(layers: list[ReleaseLinear], group: int) -> None:
    for layer in layers:
        layer.group = group


def release_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The release file's tensors (LoRA kept apart, as they ship it), in ``dtype``."""
    return {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }


def weight_codes(layer: ReleaseLinear) -> torch.Tensor:
    """The release's codes of one layer, in the layer's dtype."""
    s, z = layer.wquantizer.scale, layer.wquantizer.zero_point
    return torch.clamp(torch.round(layer.merged_weight() / s + z), 0, 2**layer.bits - 1)
