"""Replace the ``nn.Linear`` layers a ``qvgen.layer_policy.LayerPolicy`` selects by ``QuantLinear``."""

from __future__ import annotations

from torch import nn

from qvgen.layer_policy import LayerPolicy
from qvgen.linear_swap import swap_linears
from training.quant.config import QuantScheme
from training.quant.quant_linear import QuantLinear


def quantize_linears(
    model: nn.Module, scheme: QuantScheme, rank: int, policy: LayerPolicy | None = None
) -> list[str]:
    """Swap the selected ``nn.Linear`` modules of ``model`` in place; returns their paths.

    ``rank`` is Φ's initial rank (0 for QAT without Φ, e.g. the LSQ baseline). Raises
    ``ValueError`` when the policy selects nothing, which is always a mistake.
    """
    if rank < 0:
        raise ValueError(f"Φ rank must be ≥ 0, got {rank}")
    names = (policy or LayerPolicy()).select(model)

    def build(name: str, linear: nn.Linear) -> nn.Module:
        effective_rank = min(rank, linear.in_features, linear.out_features)
        return QuantLinear.from_linear(linear, scheme, effective_rank, name)

    return swap_linears(model, names, build)
