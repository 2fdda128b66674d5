"""The configurations ``qvgen bench e2e`` times against each other, in one process, on the same
inputs: what a user already has (bf16 eager, bf16 + ``torch.compile``, FP8 rowwise linears +
``torch.compile``) and ours (W4A4 eager, W4A4 + ``torch.compile``, and that with the 8-bit
self-attention kernel, ``service.kernels.wan_attention``), each compiled W4A4 peer also with
the activation quantization fused into the norms and the GELU
(``service.kernels.wan_block_prologues``; ``+fused-norm``).

A model is built once per base variant and taken through its peers in order, each step changing
it in place: compile (``service.engine.compilation``, the engine's own code), undo, swap the
linears to FP8 (``benchmarks.fp8_linear``; irreversible, so it comes last), compile again;
likewise the 8-bit attention comes after the W4A4 peers that run SDPA. The fused norms are put in
and taken out again per peer (``fuse_block_prologues`` / ``unfuse_block_prologues``).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.fp8_linear import to_fp8_rowwise
from service.engine.compilation import (
    CompiledModules,
    CompileOptions,
    CompileScope,
    compile_transformer,
)
from service.engine.types import CompilePolicy
from service.kernels.wan_attention import use_int8_self_attention
from service.kernels.wan_block_prologues import fuse_block_prologues, unfuse_block_prologues

logger = logging.getLogger(__name__)


class ModelVariant(enum.Enum):
    """Which transformer a peer starts from: the bf16 model, or its W4A4 packed version with
    q/k/v fused as the engine can serve them (one activation quantization and one GEMM per
    attention input) or as separate layers (one quantization and one GEMM per projection)."""

    BF16 = "bf16"
    W4A4_SEPARATE_QKV = "w4a4-separate-qkv"
    W4A4 = "w4a4"

    @property
    def fused_projections(self) -> bool:
        return self is ModelVariant.W4A4


class Peer(enum.Enum):
    """One timed configuration; members are in the order a model is taken through them."""

    BF16 = "bf16"
    BF16_COMPILE = "bf16+compile"
    FP8_COMPILE = "fp8+compile"
    W4A4_SEPARATE_QKV_COMPILE = "w4a4-separate-qkv+compile"
    W4A4 = "w4a4"
    W4A4_COMPILE = "w4a4+compile"
    W4A4_COMPILE_FUSED = "w4a4+compile+fused-norm"
    W4A4_COMPILE_ATTN8 = "w4a4+compile+attn8"
    W4A4_COMPILE_ATTN8_FUSED = "w4a4+compile+attn8+fused-norm"

    @property
    def variant(self) -> ModelVariant:
        if self.value.startswith(ModelVariant.W4A4_SEPARATE_QKV.value):
            return ModelVariant.W4A4_SEPARATE_QKV
        return ModelVariant.W4A4 if self.value.startswith("w4a4") else ModelVariant.BF16

    @property
    def compiled(self) -> bool:
        return "+compile" in self.value

    @property
    def attention8(self) -> bool:
        return "+attn8" in self.value

    @property
    def fused_prologues(self) -> bool:
        return self.value.endswith("+fused-norm")

    @property
    def fp8(self) -> bool:
        return self is Peer.FP8_COMPILE

    @property
    def ours(self) -> bool:
        return self.variant is not ModelVariant.BF16


@dataclass(frozen=True)
class CompileSettings:
    """How the compiled peers compile: the engine's scope and a ``torch.compile`` backend."""

    scope: CompileScope = CompileScope.BLOCKS
    backend: str = "inductor"


@dataclass
class PeerModel:
    """A model on its way through the peers: what was done to it so far."""

    transformer: nn.Module
    compiled: CompiledModules | None = None
    fp8_impl: str | None = None
    attention8: bool = False
    fused_prologues: bool = False

    def prepare(self, peer: Peer, settings: CompileSettings) -> None:
        """Bring the model into ``peer``'s configuration (peers must come in enum order)."""
        if self.compiled is not None:
            self.compiled.undo()
            self.compiled = None
            torch._dynamo.reset()
        if peer.fp8 and self.fp8_impl is None:
            self.fp8_impl = to_fp8_rowwise(self.transformer)
            logger.info("FP8 rowwise linears by %s", self.fp8_impl)
        if peer.attention8 and not self.attention8:
            blocks = use_int8_self_attention(self.transformer)
            logger.info("8-bit self-attention in %d blocks", blocks)
            self.attention8 = True
        if peer.fused_prologues != self.fused_prologues:
            if peer.fused_prologues:
                fuse_block_prologues(self.transformer)
            else:
                unfuse_block_prologues(self.transformer)
            self.fused_prologues = peer.fused_prologues
        if peer.compiled:
            options = CompileOptions(
                policy=CompilePolicy.ON, scope=settings.scope, backend=settings.backend
            )
            self.compiled = compile_transformer(self.transformer, options)

    def release(self) -> None:
        if self.compiled is not None:
            self.compiled.undo()
            self.compiled = None
        torch._dynamo.reset()
