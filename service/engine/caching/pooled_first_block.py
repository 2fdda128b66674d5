"""First-block caching with a criterion that quantization noise does not move.

diffusers' FirstBlockCache runs the first transformer block on every call and skips the rest
when its residual r = block₀(x) − x has barely changed since the last call that ran them all::

    d = mean|r − r_prev| / mean|r_prev|        skip the remaining blocks when d ≤ threshold

A W4A4 model quantizes activations per token: each token's rounding error is its own, and it
changes from one call to the next whenever the token's values cross a rounding boundary (the
model's output is discontinuous in its input). That error is noise in r, independent across
tokens, and d measures it as change: on qvgen-tiny's W4A4 model d is 0.099 in the middle of a
20-step generation where the full-precision model's is 0.049 (``qvgen tiny residual-noise``,
docs/caching.md), so the same threshold skips far fewer passes and a threshold that does skip
passes lets real change through.

Averaging r over windows of P consecutive tokens before comparing divides the noise's size by
√P and keeps the signal, which is smooth across neighbouring tokens (Wan orders tokens frame,
row, column: a window is a run of patches along a row)::

    r̄_w = mean of r over tokens [wP, (w+1)P)       d̄ = mean|r̄ − r̄_prev| / mean|r̄_prev|

With P = 16 the W4A4 model's d̄ falls to 0.055 against the full-precision model's 0.045; the
full-precision model's own d barely moves (0.049 at P = 1). The cost is one pooling of the residual,
O(tokens × width), against the block's O(tokens × width²) — as cheap as diffusers' criterion.

Everything else (which blocks are skipped, the cached residuals, the guidance branches' separate
state) is diffusers' own: the hook replaces only the head block's criterion.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.hooks.first_block_cache import (
    _FBC_LEADER_BLOCK_HOOK,
    FBCHeadBlockHook,
)
from diffusers.hooks.hooks import HookRegistry
from torch import nn

# Tokens per pooling window (module docstring).
POOL_TOKENS = 16


def pooled_relative_change(
    current: torch.Tensor, previous: torch.Tensor, pool: int = POOL_TOKENS
) -> float:
    """d̄ between two residuals [B, S, C]: relative L1 change of their means over windows of
    ``pool`` tokens (a last, shorter window is dropped; with fewer than ``pool`` tokens, one
    window of all of them)."""
    if current.shape != previous.shape or current.ndim != 3:
        raise ValueError(f"residuals {tuple(current.shape)} and {tuple(previous.shape)} differ")
    batch, tokens, width = current.shape
    size = min(pool, tokens)
    windows = tokens // size
    span = windows * size
    pooled = (
        torch.stack((current[:, :span], previous[:, :span]))
        .float()
        .reshape(2, batch, windows, size, width)
        .mean(dim=3)
    )
    change = (pooled[0] - pooled[1]).abs().mean()
    return float(change / pooled[1].abs().mean())


class PooledFirstBlockHead(FBCHeadBlockHook):
    """diffusers' head-block hook with ``pooled_relative_change`` as its criterion."""

    def __init__(self, head: FBCHeadBlockHook, pool: int = POOL_TOKENS) -> None:
        super().__init__(head.state_manager, head.threshold)
        self.pool = pool

    @torch.compiler.disable
    def _should_compute_remaining_blocks(self, hidden_states_residual: torch.Tensor) -> bool:
        previous = self.state_manager.get_state().head_block_residual
        if previous is None:
            return True
        return pooled_relative_change(hidden_states_residual, previous, self.pool) > self.threshold


def enable_pooled_first_block_cache(
    transformer: Any, head_block: nn.Module, threshold: float, pool: int = POOL_TOKENS
) -> None:
    """diffusers' FirstBlockCache on ``transformer`` with the head hook on ``head_block``
    replaced by ``PooledFirstBlockHead``; ``transformer.disable_cache()`` removes it all."""
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    registry = HookRegistry.check_if_exists_or_initialize(head_block)
    head = registry.get_hook(_FBC_LEADER_BLOCK_HOOK)
    if not isinstance(head, FBCHeadBlockHook):
        raise RuntimeError("diffusers' FirstBlockCache registered no head-block hook")
    registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=False)
    registry.register_hook(PooledFirstBlockHead(head, pool), _FBC_LEADER_BLOCK_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
