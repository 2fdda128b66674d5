"""Teacher and student: the frozen full-precision transformer and its quantized, trainable copy.

The student is built from the teacher's weights: every ``nn.Linear`` the layer policy selects
becomes a ``QuantLinear`` (``training.quant.swap``) with Φ of the requested rank, and a forward
pre-hook sets each layer's activation-clip group from the sampled timestep, per sample
(``qvgen.timestep_groups``). Trainable are exactly the QVGen recipe's tensors — latent weights
W, weight scale and zero point, Φ's L and R, activation clip logits — everything else (biases,
norms, embeddings, full-precision layers) stays frozen at the teacher's values.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import diffusers
import torch
from torch import nn

from qvgen.layer_policy import LayerPolicy
from qvgen.timestep_groups import bind_timestep_groups
from training.quant.config import QuantScheme
from training.quant.quant_linear import QuantLinear
from training.quant.rank_decay import quant_linears
from training.quant.swap import quantize_linears

logger = logging.getLogger(__name__)


def load_transformer(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The pipeline's full-precision transformer (CPU, eval mode).

    Loading in the target dtype (rather than casting afterwards) lets diffusers keep the
    modules its models mark as float32-only (Wan's norms and time embedder) in float32.
    """
    config_path = Path(model_dir) / "transformer" / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a diffusers pipeline directory")
    name = json.loads(config_path.read_text()).get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ValueError(f"{model_dir}/transformer/config.json names unknown class {name!r}")
    model = cls.from_pretrained(model_dir, subfolder="transformer", torch_dtype=dtype)  # type: ignore[attr-defined]
    return model.eval()


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _check_rank(model: nn.Module, policy: LayerPolicy, rank: int) -> None:
    smallest = min(
        (
            (min(m.in_features, m.out_features), name)
            for name, m in model.named_modules()
            if type(m) is nn.Linear and policy.selects(name)
        ),
        default=None,
    )
    if smallest is not None and rank > smallest[0]:
        raise ValueError(
            f"--rank {rank} exceeds the smallest quantized layer ({smallest[1]}, "
            f"min(in, out) = {smallest[0]}); use --rank in [1, {smallest[0]}]"
        )


def trainable_parameters(layer: QuantLinear) -> list[tuple[str, nn.Parameter]]:
    """The layer's trainable tensors, named relative to the layer."""
    return [
        (name, p)
        for name, p in layer.named_parameters()
        if name == "weight" or name.startswith(("weight_quantizer.", "act_quantizer.", "phi."))
    ]


def build_student(
    teacher: nn.Module, scheme: QuantScheme, rank: int, policy: LayerPolicy, trainable: bool
) -> nn.Module:
    """A quantized copy of ``teacher`` with Φ of ``rank``; trains only the recipe's tensors."""
    _check_rank(teacher, policy, rank)
    student = copy.deepcopy(teacher)
    names = quantize_linears(student, scheme, rank, policy)
    # After the swap: QuantLinear makes fresh parameters (its bias too), which would otherwise
    # require gradients that no optimizer group ever zeroes.
    for p in student.parameters():
        p.requires_grad_(False)
    for layer in quant_linears(student):
        for _, p in trainable_parameters(layer):
            p.requires_grad_(trainable)
    bind_timestep_groups(student, scheme.clip_groups)
    logger.info(
        "student: %d %s layers, Φ rank %d, %.1f M trainable parameters",
        len(names),
        scheme.label,
        rank,
        sum(p.numel() for p in student.parameters() if p.requires_grad) / 1e6,
    )
    return student


def phi_rank(model: nn.Module) -> int:
    """The largest Φ rank over the model's quantized layers (0 once Φ is gone)."""
    return max((m.phi_rank for m in quant_linears(model)), default=0)
