"""Wan's self-attention on the 8-bit kernel (``attention_int8``): a diffusers attention processor.

``Int8SelfAttnProcessor`` computes what diffusers' ``WanAttnProcessor`` computes for the
self-attention of a text-to-video block (projections, fused or not; RMS norms of q and k;
rotary embedding; attention; output projection) with ``int8_attention`` in place of SDPA.
Cross-attention keeps SDPA: its 512 text keys cost little next to the video's 32 760.
``use_int8_self_attention`` installs it on every block's ``attn1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from service.kernels.attention_int8 import int8_attention


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding (interleaved pairs), as ``WanAttnProcessor`` applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class Int8SelfAttnProcessor:
    """Self-attention of a text-to-video ``WanAttention`` through ``int8_attention``."""

    def __call__(
        self,
        attn: Any,  # diffusers' WanAttention (its submodules are typed as Tensor | Module)
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("Int8SelfAttnProcessor serves self-attention without a mask only")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = (
                attn.to_q(hidden_states),
                attn.to_k(hidden_states),
                attn.to_v(hidden_states),
            )
        query, key = attn.norm_q(query), attn.norm_k(key)
        heads = attn.heads
        query, key, value = (t.unflatten(2, (heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        out = int8_attention(query, key, value).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def use_int8_self_attention(transformer: nn.Module) -> int:
    """Put every text-to-video Wan block's self-attention on the 8-bit kernel; returns how many."""
    count = 0
    for module in transformer.modules():
        if type(module).__name__ != "WanAttention" or module.is_cross_attention:
            continue
        if module.add_k_proj is not None:  # image-to-video blocks keep diffusers' processor
            continue
        module.set_processor(Int8SelfAttnProcessor())
        count += 1
    return count
