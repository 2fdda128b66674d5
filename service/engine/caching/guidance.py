"""The unconditional guidance pass stopped after a fraction of the steps.

Classifier-free guidance runs the transformer twice a step, ε = ε_u + w (ε_c − ε_u). Late in
sampling the two predictions differ little and the layout is settled, so dropping ε_u there
changes the video less than anywhere else ("CFG truncation"). ``guidance_stop`` s ∈ [0, 1] keeps
the unconditional pass in the first k = ⌈s · N⌉ of N steps and runs one pass a step after them.

Wan's pipeline decides per step from its ``guidance_scale`` property, so the step-end callback
sets the pipeline's scale to 1 after step k − 1: the pipeline's own, documented way to change
guidance mid-loop (diffusers' callbacks). CogVideoX's pipeline fixes the decision before its
loop and batches both passes into one call; it is not offered there (``CachingRules``).

A checkpoint served with the release's clip-group order (``CALL_COUNTDOWN``,
``qvgen/timestep_groups.py``) counts transformer calls; every left-out call is counted as if it
ran, so the conditional calls after step k keep the clip groups of the full run.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from qvgen.timestep_groups import skip_timestep_group_calls

# Rounding slack: a stop of 0.35 over 20 steps is 7 steps, not ⌈7.000000000000001⌉ = 8.
_SLACK = 1e-9


def unconditional_steps(guidance_stop: float, steps: int) -> int:
    """k = ⌈s · N⌉: how many steps, from the first, run the unconditional pass."""
    if not 0 <= guidance_stop <= 1:
        raise ValueError(f"guidance_stop must lie in [0, 1], got {guidance_stop}")
    return min(steps, max(0, math.ceil(guidance_stop * steps - _SLACK)))


class GuidanceStop:
    """One generation's early stop; the engine calls ``after_step`` from its step callback.

    ``pipeline_scale``: the guidance scale to hand the pipeline call (1.0 when no step at all
    runs the unconditional pass, else the request's).
    """

    def __init__(
        self, transformer: nn.Module, guidance_scale: float, guidance_stop: float, steps: int
    ) -> None:
        self.transformer = transformer
        self.guided = guidance_scale > 1.0
        self.kept = unconditional_steps(guidance_stop, steps) if self.guided else steps
        self.pipeline_scale = guidance_scale if self.kept > 0 else 1.0

    def after_step(self, pipeline: Any, index: int) -> None:
        """After step ``index`` (0-based): stop guidance once ``kept`` steps ran it; count the
        unconditional call a step after them left out."""
        if not self.guided:
            return
        if index + 1 == self.kept:
            pipeline._guidance_scale = 1.0
        elif index >= self.kept:
            skip_timestep_group_calls(self.transformer, 1)
