"""Replace the ``nn.Linear`` layers of a diffusers transformer by ``QuantLinear``.

Default policy (``LayerPolicy()``): quantize every linear inside the transformer blocks —
``blocks.*`` (Wan 2.1) and ``transformer_blocks.*`` (CogVideoX): attention q/k/v/out, the
cross-attention projections and the feed-forward layers, which hold almost all weights and
FLOPs — and keep in full precision

* the adaptive-norm modulation linears (``*norm*``, e.g. CogVideoX's ``norm1.linear``): they act
  on the timestep embedding, one row per sample, so they cost nothing and their error shifts
  every token of the block;
* everything outside the blocks: patch embedding, the timestep and text embedders and the output
  projection ``proj_out``, which are small and sensitive (the first and last layers).

The released QVGen recipe quantizes every linear of the transformer; ``LayerPolicy.everything()``
reproduces that. Patterns are ``fnmatch`` globs over module paths; exclude wins over include.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from training.quant.config import QuantScheme
from training.quant.quant_linear import QuantLinear


@dataclass(frozen=True)
class LayerPolicy:
    """Which ``nn.Linear`` modules (by dotted path) are quantized."""

    include: tuple[str, ...] = ("blocks.*", "transformer_blocks.*")
    exclude: tuple[str, ...] = ("*norm*",)

    @classmethod
    def everything(cls) -> LayerPolicy:
        return cls(include=("*",), exclude=())

    def selects(self, name: str) -> bool:
        included = any(fnmatch.fnmatchcase(name, p) for p in self.include)
        return included and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def quantize_linears(
    model: nn.Module, scheme: QuantScheme, rank: int, policy: LayerPolicy | None = None
) -> list[str]:
    """Swap the selected ``nn.Linear`` modules of ``model`` in place; returns their paths.

    ``rank`` is Φ's initial rank (0 for QAT without Φ, e.g. the LSQ baseline). Raises
    ``ValueError`` when the policy selects nothing, which is always a mistake.
    """
    policy = policy or LayerPolicy()
    if rank < 0:
        raise ValueError(f"Φ rank must be ≥ 0, got {rank}")
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and policy.selects(name)
    ]
    if not targets:
        raise ValueError(
            f"the layer policy (include={policy.include}, exclude={policy.exclude}) selects "
            "no nn.Linear of this model"
        )
    for name, linear in targets:
        effective_rank = min(rank, linear.in_features, linear.out_features)
        _set_submodule(model, name, QuantLinear.from_linear(linear, scheme, effective_rank, name))
    return [name for name, _ in targets]


def full_precision_linears(model: nn.Module) -> list[str]:
    """Paths of the ``nn.Linear`` modules left in full precision."""
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]
