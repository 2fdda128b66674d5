"""Wan blocks whose quantized linears quantize their input inside the op that makes it.

diffusers' ``WanTransformerBlock`` computes four activations only to hand them to quantized
linears, which read them back to quantize them::

    attn1 ← RN(LN(x) · (1 + scale_msa) + shift_msa)         (q, k, v)
    attn2 ← RN(LN_affine(x))                                 (q; k, v read the text)
    ffn   ← RN(LN(x) · (1 + c_scale_msa) + c_shift_msa)      (FFN-up)
    ffn.net.2 ← GELU_tanh(FFN-up's output)                   (FFN-down)

``PrologueWanBlock`` is that block with the same forward except that each of these inputs
goes to its consumer as a ``service.kernels.prologue`` object (the op and its operands) where
the consumer is a Triton layer, which then computes and quantizes it in one kernel
(``service.kernels.prologue_quant``) with its own clip table of the current timestep group.
Any other consumer — a reference layer, a full-precision linear, an attention processor that
might use its input otherwise — gets the activation materialized by diffusers' own
expressions, so there the block computes exactly what diffusers' computes. The attention
processors known to pass their ``hidden_states`` only to the projections are diffusers'
``WanAttnProcessor`` and ``Int8SelfAttnProcessor``; each call checks which one is installed.

Exactness: the fused kernels' codes, scales and sums are ``qvgen.numerics.quantize_tokens`` of
their own activation, which equals diffusers' within one rounding of the model dtype
(``prologue_quant``); wherever the two activations are equal, the block's output is the
unfused block's bit for bit (tests/service/kernels/test_wan_block_prologues.py).

``fuse_block_prologues`` turns every Wan block of a transformer into a ``PrologueWanBlock`` in
place — the module keeps its identity, children and state-dict names; only the class, hence
the forward, changes — and ``unfuse_block_prologues`` turns them back.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers.models.activations import GELU
from diffusers.models.attention import FeedForward
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformerBlock
from torch import nn

from service.kernels.fused_projections import FusedLowBitLinear, FusionRefused
from service.kernels.lowbit_linear import TritonLowBitLinear
from service.kernels.prologue import GeluTanh, NormModulation
from service.kernels.wan_attention import Int8SelfAttnProcessor

logger = logging.getLogger(__name__)

# Processors that hand the attention's hidden_states to its projections and to nothing else.
_PASSING_PROCESSORS = (WanAttnProcessor, Int8SelfAttnProcessor)


def _fuses(module: nn.Module) -> bool:
    return isinstance(module, (TritonLowBitLinear, FusedLowBitLinear))


def _projections_fuse(attn: nn.Module, names: list[str]) -> bool:
    if type(getattr(attn, "processor", None)) not in _PASSING_PROCESSORS:
        return False
    return all(_fuses(getattr(attn, name)) for name in names)


def _self_attention_fuses(attn: nn.Module) -> bool:
    names = ["to_qkv"] if attn.fused_projections else ["to_q", "to_k", "to_v"]
    return _projections_fuse(attn, names)


def _handed(prologue: NormModulation, fuses: bool) -> torch.Tensor | NormModulation:
    """The prologue itself for a consumer that fuses it, else its materialized activation."""
    return prologue if fuses else prologue.materialize()


def _modulation(table: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(shift, scale, gate, c_shift, c_scale, c_gate), as ``WanTransformerBlock.forward``
    splits them: [B, 1, K] from temb [B, 6, K], or [B, S, K] from Wan 2.2's [B, S, 6, K]."""
    if temb.ndim == 4:
        parts = (table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
        return tuple(p.squeeze(2) for p in parts)
    return (table + temb.float()).chunk(6, dim=1)


class PrologueWanBlock(WanTransformerBlock):
    """``WanTransformerBlock`` with its quantized linears' inputs handed over as prologues
    (module docstring). Made only by ``fuse_block_prologues``, from a checked block."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: torch.Tensor,
    ) -> torch.Tensor:
        shift, scale, gate, c_shift, c_scale, c_gate = _modulation(self.scale_shift_table, temb)

        # 1. Self-attention
        normed = NormModulation(hidden_states, self.norm1, shift, scale)
        attn_input = _handed(normed, _self_attention_fuses(self.attn1))
        attn_output = self.attn1(attn_input, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate).type_as(hidden_states)

        # 2. Cross-attention (an Identity norm2 gives hidden_states' own values back)
        query_input: torch.Tensor | NormModulation = hidden_states
        if isinstance(self.norm2, nn.LayerNorm):
            normed = NormModulation(hidden_states, self.norm2)
            query_input = _handed(normed, _projections_fuse(self.attn2, ["to_q"]))
        attn_output = self.attn2(query_input, encoder_hidden_states, None, None)
        hidden_states = hidden_states + attn_output

        # 3. Feed-forward
        normed = NormModulation(hidden_states, self.norm3, c_shift, c_scale)
        ff_output = self._feed_forward(normed)
        return (hidden_states.float() + ff_output.float() * c_gate).type_as(hidden_states)

    def _feed_forward(self, normed: NormModulation) -> torch.Tensor:
        net: Any = self.ffn.net  # diffusers' submodules are typed Tensor | Module
        gelu, dropout, down = net
        up = gelu.proj
        hidden = up(_handed(normed, _fuses(up)))
        if _fuses(down):
            return down(GeluTanh(hidden))
        return down(dropout(gelu.gelu(hidden)))


def _structure_refusal(block: nn.Module) -> str | None:
    """Why ``PrologueWanBlock.forward`` would not compute ``block``'s forward; None if it would."""
    if type(block) is not WanTransformerBlock:
        return f"{type(block).__name__} is not diffusers' WanTransformerBlock"
    for name in ("norm1", "norm3"):
        norm = getattr(block, name)
        if not isinstance(norm, FP32LayerNorm) or norm.weight is not None:
            return f"{name} is {norm!r}, not a float32 LayerNorm without affine parameters"
    if not isinstance(block.norm2, FP32LayerNorm | nn.Identity):
        return f"norm2 is {block.norm2!r}, not a float32 LayerNorm or Identity"
    ffn = block.ffn
    if not isinstance(ffn, FeedForward) or len(ffn.net) != 3:
        return f"ffn is not a FeedForward of [GELU, Dropout, Linear]: {ffn!r}"
    gelu, dropout, _ = ffn.net
    if not isinstance(gelu, GELU) or gelu.approximate != "tanh":
        return f"ffn.net.0 is {gelu!r}, not GELU(approximate='tanh')"
    if not isinstance(dropout, nn.Dropout) or dropout.p != 0.0:
        return f"ffn.net.1 is {dropout!r}, not a Dropout with p = 0"
    return None


def fuse_block_prologues(transformer: nn.Module) -> int:
    """Make every ``WanTransformerBlock`` of ``transformer`` a ``PrologueWanBlock`` (in place);
    returns how many. Raises ``FusionRefused`` naming the block and why, changing nothing, when
    a block's structure is not the one its forward is written for."""
    blocks = [(n, m) for n, m in transformer.named_modules() if type(m) is WanTransformerBlock]
    for name, block in blocks:
        if (why := _structure_refusal(block)) is not None:
            raise FusionRefused(f"{name}: {why}")
    for _, block in blocks:
        block.__class__ = PrologueWanBlock
    fusing = sum(_fuses(m) for m in transformer.modules())
    logger.info(
        "quantization fused into norms and GELU: %d blocks, %d Triton layers", len(blocks), fusing
    )
    return len(blocks)


def unfuse_block_prologues(transformer: nn.Module) -> int:
    """Turn every ``PrologueWanBlock`` back into diffusers' block; returns how many."""
    blocks: list[nn.Module] = [m for m in transformer.modules() if type(m) is PrologueWanBlock]
    for block in blocks:
        block.__class__ = WanTransformerBlock
    return len(blocks)
