"""One generation's cache policy on the transformer, and the passes it ran.

``cache_session`` enables the policy's diffusers hooks for the length of one generation and
removes them after it, whatever happened: the hooks keep per-generation state (the cached
residuals, MagCache's accumulated error, each guidance branch's own), and a request may ask for
another policy, or none, next time. ``CachePolicy.NONE`` registers no cache hook at all, so its
generation runs exactly the code it ran before policies existed.

Passes are counted by a hook of ours on the last block, registered before the cache hooks and so
wrapped by them: it runs only when the policy lets the last block run, and counts the samples
of that call (Wan: 1 a call; CogVideoX batches both guidance passes into one call of 2).

``torch.compile``: the engine compiles each block's own ``forward`` (``service.engine.
compilation``), and the hooks wrap that compiled function from outside, so the skip decisions
(Python control flow on values read from the GPU) run eagerly and never enter a graph: no graph
break, no guard on a policy's state, no recompilation per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig
from diffusers.hooks.hooks import HookRegistry, ModelHook
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, MagCacheBlockHook
from torch import nn

from qvgen.checkpoint.cache_calibration import MagCacheEntry
from service.engine.caching.pooled_first_block import enable_pooled_first_block_cache
from service.engine.types import CachePolicy

_PASS_COUNTER_HOOK = "qvgen_pass_counter"


@dataclass
class PassCount:
    """Samples of transformer calls that ran the last block (full passes), and, in MagCache's
    calibration, each guidance branch's magnitude ratios in step order."""

    full: int = 0
    ratios: dict[str, list[float]] = field(default_factory=dict)


class _PassCounter(ModelHook):
    def __init__(self, count: PassCount) -> None:
        super().__init__()
        self.count = count

    def pre_forward(
        self, module: nn.Module, *args: Any, **kwargs: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.count.full += int(hidden.shape[0]) if hidden is not None else 1
        return args, kwargs


@dataclass(frozen=True)
class CachePlan:
    """What one generation runs: the policy and its resolved threshold; MagCache's ratios for
    the request's step count, or ``calibrate`` to measure them instead of skipping anything."""

    policy: CachePolicy
    threshold: float | None = None
    steps: int = 0
    magcache: MagCacheEntry | None = None
    calibrate: bool = False

    def __post_init__(self) -> None:
        if self.policy is CachePolicy.NONE:
            return
        if self.calibrate:
            if self.policy is not CachePolicy.MAGCACHE:
                raise ValueError(f"only magcache calibrates, not {self.policy.value}")
            return
        if self.threshold is None:
            raise ValueError(f"{self.policy.value} needs a threshold")
        if self.policy is CachePolicy.MAGCACHE and (
            self.magcache is None or self.magcache.num_inference_steps != self.steps
        ):
            raise ValueError(f"magcache needs ratios calibrated for {self.steps} steps")


def _magcache_config(plan: CachePlan) -> MagCacheConfig:
    if plan.calibrate:
        return MagCacheConfig(calibrate=True, num_inference_steps=plan.steps)
    assert plan.magcache is not None and plan.threshold is not None
    return MagCacheConfig(
        threshold=plan.threshold,
        num_inference_steps=plan.steps,
        mag_ratios=list(plan.magcache.mag_ratios),
    )


def _record_calibration(tail: nn.Module, count: PassCount) -> None:
    """Keep each ratio diffusers' MagCache calibration computes, by guidance branch (diffusers
    only logs them, and forgets them at the generation's end)."""
    hook = HookRegistry.check_if_exists_or_initialize(tail).get_hook(_MAG_CACHE_BLOCK_HOOK)
    if not isinstance(hook, MagCacheBlockHook):
        raise RuntimeError("diffusers' MagCache registered no hook on the last block")
    measure = hook._perform_calibration_step

    def recording(state: Any, residual: Any) -> None:
        measure(state, residual)
        branch = hook.state_manager.context.name
        count.ratios.setdefault(branch, []).append(float(state.calibration_ratios[-1]))

    hook._perform_calibration_step = recording  # type: ignore[method-assign,assignment]


def _enable(transformer: Any, blocks: list[nn.Module], plan: CachePlan, count: PassCount) -> None:
    if plan.policy is CachePolicy.FIRST_BLOCK:
        assert plan.threshold is not None
        transformer.enable_cache(FirstBlockCacheConfig(threshold=plan.threshold))
    elif plan.policy is CachePolicy.FIRST_BLOCK_POOLED:
        assert plan.threshold is not None
        enable_pooled_first_block_cache(transformer, blocks[0], plan.threshold)
    elif plan.policy is CachePolicy.MAGCACHE:
        transformer.enable_cache(_magcache_config(plan))
        if plan.calibrate:
            _record_calibration(blocks[-1], count)


@contextlib.contextmanager
def cache_session(
    transformer: Any, blocks: list[nn.Module], plan: CachePlan
) -> Iterator[PassCount]:
    """Run the body with ``plan``'s hooks on ``transformer`` (whose repeated blocks, in order, are
    ``blocks``); the yielded ``PassCount`` fills in as the transformer runs."""
    count = PassCount()
    tail = HookRegistry.check_if_exists_or_initialize(blocks[-1])
    tail.register_hook(_PassCounter(count), _PASS_COUNTER_HOOK)
    try:
        if plan.policy is not CachePolicy.NONE:
            _enable(transformer, blocks, plan, count)
        yield count
    finally:
        if getattr(transformer, "_cache_config", None) is not None:
            transformer.disable_cache()
        tail.remove_hook(_PASS_COUNTER_HOOK, recurse=False)
