"""The rank-decay schedule that removes Φ completely: a pure function of the training step.

Training runs in phases of T steps. Phase k (k = 0, 1, …) has rank r_k: r_0 = r and
r_{k+1} = ⌊r_k / 2⌋, so 32, 16, 8, 4, 2, 1 and then 0 (Φ deleted). Within phase k, at step
τ ∈ [0, T) inside it, the components i < ⌊r_k / 2⌋ keep γ_i = 1 and the others decay as

    cosine: γ_i = (1 + cos(π · (τ + 1) / T)) / 2        linear: γ_i = 1 − (τ + 1) / T

reaching exactly 0 on the phase's last step, so dropping them at the boundary changes nothing;
the kept product is then re-decomposed by SVD (``phi.LowRankBranch.truncated``) and the next
phase starts. After the last phase (r_k = 1, whose single component decays) the model is Φ-free.

``sync_rank_decay(model, step)`` brings every QuantLinear to the state of ``step``: it applies any
boundary not yet applied and sets γ. It is idempotent, so resuming at any step is exact as long
as the checkpoint holds Φ at that step's rank.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import nn

from qvgen.device_copy import shared_copy
from training.quant.quant_linear import QuantLinear


class DecayShape(enum.Enum):
    COSINE = "cosine"
    LINEAR = "linear"


@dataclass(frozen=True)
class RankDecaySchedule:
    """``initial_rank`` r ≥ 0 (0: no Φ, plain QAT), ``phase_steps`` T ≥ 1, decay shape."""

    initial_rank: int
    phase_steps: int
    shape: DecayShape = DecayShape.COSINE

    def __post_init__(self) -> None:
        if not isinstance(self.initial_rank, int) or self.initial_rank < 0:
            raise ValueError(f"initial_rank must be an integer ≥ 0, got {self.initial_rank!r}")
        if not isinstance(self.phase_steps, int) or self.phase_steps < 1:
            raise ValueError(f"phase_steps must be an integer ≥ 1, got {self.phase_steps!r}")

    @property
    def ranks(self) -> tuple[int, ...]:
        """Rank of each phase, ending with the final 0: e.g. (32, 16, 8, 4, 2, 1, 0)."""
        chain = [self.initial_rank]
        while chain[-1] > 0:
            chain.append(chain[-1] // 2)
        return tuple(chain)

    @property
    def num_phases(self) -> int:
        """Phases that hold Φ (len(ranks) − 1)."""
        return len(self.ranks) - 1

    @property
    def phi_free_step(self) -> int:
        """First step at which Φ is gone."""
        return self.num_phases * self.phase_steps

    @classmethod
    def for_total_steps(
        cls, initial_rank: int, total_steps: int, shape: DecayShape = DecayShape.COSINE
    ) -> RankDecaySchedule:
        """T = ⌊N / phases⌋ so Φ is gone by step N (the released recipe: 2667 → T = 444)."""
        probe = cls(initial_rank, 1, shape)
        if total_steps < probe.num_phases:
            raise ValueError(
                f"{total_steps} steps cannot hold {probe.num_phases} rank-decay phases of ≥ 1 step"
            )
        return cls(initial_rank, max(1, total_steps // max(1, probe.num_phases)), shape)

    def phase(self, step: int) -> int:
        if step < 0:
            raise ValueError(f"step must be ≥ 0, got {step}")
        return min(step // self.phase_steps, self.num_phases)

    def rank_at(self, step: int) -> int:
        """Structural rank of Φ at ``step`` (0 once Φ is gone)."""
        return self.ranks[self.phase(step)]

    def decay_factor(self, step: int) -> float:
        """γ of the decaying components at ``step`` (1 → 0 over the phase)."""
        progress = (step % self.phase_steps + 1) / self.phase_steps
        if self.shape is DecayShape.COSINE:
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    def gamma(self, step: int) -> torch.Tensor:
        """γ [rank_at(step)] for ``step``: ones on the kept half, the decay factor on the rest."""
        rank = self.rank_at(step)
        gamma = torch.ones(rank)
        gamma[rank // 2 :] = self.decay_factor(step)
        return gamma


def quant_linears(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def sync_rank_decay(model: nn.Module, schedule: RankDecaySchedule, step: int) -> bool:
    """Bring every QuantLinear's Φ to ``step``'s rank and γ; True if any Φ changed shape.

    A caller that holds an optimizer must rebuild Φ's parameter group when this returns True:
    the decayed modules are new parameters.
    """
    target = schedule.rank_at(step)
    changed = False
    gamma = schedule.gamma(step)
    for layer in quant_linears(model):
        while layer.phi_rank > target:
            layer.decay_rank(layer.phi_rank // 2)
            changed = True
        if layer.phi_rank != target:
            raise ValueError(
                f"{layer.name}: Φ has rank {layer.phi_rank} but step {step} needs {target}; "
                "it was built with a smaller initial rank than the schedule's"
            )
        if layer.phi is not None:
            layer.phi.set_gamma(shared_copy(gamma, layer.phi.gamma.device))
    return changed
