"""How much of the first block's step-to-step change is quantization noise (``qvgen tiny
residual-noise``): the measurement behind the pooled first-block criterion
(``service/engine/caching/pooled_first_block.py``).

Each model generates the first ``count`` evaluation pairs (20 guided steps, every pass run); a
forward hook on the first block keeps the conditional branch's residual r_i = block₀(x) − x of
every step. For each pooling window P the table gives the median over clips and over the middle
steps 5–14 of d̄_i = mean|r̄_i − r̄_{i−1}| / mean|r̄_{i−1}|, r̄ the mean of r over windows of P
tokens (``pooled_relative_change``; P = all: one window).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recipes.tiny_model.compare import TINY_EVAL, evaluation_set
from service.engine.caching.pooled_first_block import pooled_relative_change
from service.engine.types import GenerationRequest

POOLS = (1, 4, 16, 2**31)
MIDDLE_STEPS = range(5, 15)


def residual_changes(model_dir: Path, count: int, device: str = "cpu") -> dict[int, float]:
    """Pool size → median d̄ over clips and middle steps (module docstring)."""
    from service.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine.from_pretrained(model_dir, device=device)
    block = engine.pipeline.transformer.blocks[0]
    residuals: list[torch.Tensor] = []

    def keep(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        residuals.append((out - hidden).detach().float().cpu())

    handle = block.register_forward_hook(keep, with_kwargs=True)
    changes: dict[int, list[float]] = {pool: [] for pool in POOLS}
    try:
        for prompt, seed in evaluation_set(count):
            residuals.clear()
            engine.generate(
                GenerationRequest(prompt=prompt, seed=seed, **TINY_EVAL.request_fields())
            )
            conditional = residuals[0::2]  # Wan calls the conditional branch first in each step
            for pool in POOLS:
                for step in MIDDLE_STEPS:
                    d = pooled_relative_change(conditional[step], conditional[step - 1], pool)
                    changes[pool].append(d)
    finally:
        handle.remove()
    return {pool: float(np.median(values)) for pool, values in changes.items()}


def noise_table(rows: dict[str, dict[int, float]]) -> str:
    header = " | ".join("all" if p == POOLS[-1] else f"P = {p}" for p in POOLS)
    lines = [f"| model | {header} |", "|---|" + "---|" * len(POOLS)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[p]:.3f}" for p in POOLS) + " |")
    return "\n".join(lines)
