"""Which ``nn.Linear`` layers of a diffusers video transformer are quantized.

Default policy (``LayerPolicy()``): every linear inside the transformer blocks — ``blocks.*``
(Wan 2.1) and ``transformer_blocks.*`` (CogVideoX): attention q/k/v/out, the cross-attention
projections and the feed-forward layers, which hold almost all weights and FLOPs — and keep in
full precision

* the adaptive-norm modulation linears (``*norm*``, e.g. CogVideoX's ``norm1.linear``): they act
  on the timestep embedding, one row per sample, so they cost nothing and their error shifts
  every token of the block;
* everything outside the blocks: patch embedding, the timestep and text embedders and the output
  projection ``proj_out``, which are small and sensitive (the first and last layers).

The released QVGen recipe quantizes every linear of the transformer; ``LayerPolicy.everything()``
reproduces that. Patterns are ``fnmatch`` globs over module paths; exclude wins over include.
Training selects the layers it fake-quantizes with it, and the benchmarks the layers they
replace by random packed ones, so both quantize the same set.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn


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

    def select(self, model: nn.Module) -> list[str]:
        """Paths of the plain ``nn.Linear`` modules of ``model`` the policy selects, in module
        order. Raises ``ValueError`` when it selects none, which is always a mistake."""
        names = [
            name
            for name, module in model.named_modules()
            if type(module) is nn.Linear and self.selects(name)
        ]
        if not names:
            raise ValueError(
                f"the layer policy (include={self.include}, exclude={self.exclude}) selects "
                "no nn.Linear of this model"
            )
        return names
