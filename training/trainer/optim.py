"""AdamW with the QVGen recipe's parameter groups, and its cosine schedule with warm-up.

Groups, in this fixed order (a checkpoint's optimizer state is matched by it):

0. ``weights``: latent weights W and the weight quantizers' scale and zero point — lr 3e-5;
1. ``phi``: Φ's L and R — lr 3e-5. Rank decay replaces Φ's modules at phase boundaries, so this
   group's parameter list is swapped then (``replace_phi_group``) and the old tensors' Adam
   moments dropped; the other groups and the schedule carry on untouched;
2. ``clip``: the activation clip logits — lr 1e-2.

All with β = (0.9, 0.95), ε = 1e-8, weight decay 1e-4 (decoupled).

Learning rate at step s of N with W = round(warm-up · N) warm-up steps::

    lr(s) = lr₀ · (s + 1) / W                                  s < W
    lr(s) = lr₀ · ½ · (1 + cos(π · (s − W) / (N − W)))          otherwise
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from training.quant.rank_decay import quant_linears
from training.trainer.config import TrainConfig
from training.trainer.models import trainable_parameters


class Group(enum.IntEnum):
    WEIGHTS = 0
    PHI = 1
    CLIP = 2


@dataclass
class NamedGroups:
    """Parameter names and tensors of each group, in the model's module order."""

    names: dict[Group, list[str]]
    params: dict[Group, list[nn.Parameter]]


def _group_of(local_name: str) -> Group:
    if local_name.startswith("phi."):
        return Group.PHI
    if local_name.startswith("act_quantizer."):
        return Group.CLIP
    return Group.WEIGHTS


def named_groups(model: nn.Module) -> NamedGroups:
    names: dict[Group, list[str]] = {g: [] for g in Group}
    params: dict[Group, list[nn.Parameter]] = {g: [] for g in Group}
    for layer in quant_linears(model):
        for local, p in trainable_parameters(layer):
            group = _group_of(local)
            names[group].append(f"{layer.name}.{local}")
            params[group].append(p)
    return NamedGroups(names, params)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    groups = named_groups(model)
    lrs = {Group.WEIGHTS: config.lr, Group.PHI: config.lr, Group.CLIP: config.lr_clip}
    return torch.optim.AdamW(
        [{"params": groups.params[g], "lr": lrs[g], "name": g.name.lower()} for g in Group],
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        weight_decay=config.weight_decay,
    )


def replace_phi_group(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Point the Φ group at the model's current Φ tensors; forget the replaced ones' state."""
    group = optimizer.param_groups[Group.PHI]
    for p in group["params"]:
        optimizer.state.pop(p, None)
    group["params"] = named_groups(model).params[Group.PHI]


def lr_factor(total_steps: int, warmup: float) -> Callable[[int], float]:
    warmup_steps = round(warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> LambdaLR:
    return LambdaLR(optimizer, lr_factor(config.total_steps, config.warmup))
