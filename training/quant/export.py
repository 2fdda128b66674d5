"""Export a Φ-free fake-quantized model to the packed format v1.

For every ``QuantLinear``: the codes q_w = clamp(round(w / s + z), 0, 2^b − 1) of its latent
weight under its (trained) quantizer, packed two per byte; s, z and the bias as float32; the
activation clip table (α_lo, α_hi) per timestep group as float32 — the very values the
fake-quant forward used, so the packed model computes the same function
(``qvgen.numerics``). Every other tensor of the model is stored as it is.

Export refuses a layer whose Φ still has rank > 0: Φ would be silently dropped and the exported
model would differ from the trained one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qvgen.checkpoint import CheckpointError, PackedCheckpoint, PackedScheme, write_packed
from qvgen.linear_swap import plain_linears
from qvgen.packed_layer import PackedLinearWeights
from qvgen.packing import pack_codes
from training.quant.quant_linear import QuantLinear


@torch.no_grad()
def pack_layer(layer: QuantLinear) -> PackedLinearWeights:
    """The format-v1 tensors of one Φ-free ``QuantLinear``."""
    if layer.phi is not None:
        raise CheckpointError(
            f"{layer.name}: Φ still has rank {layer.phi_rank}; finish the rank-decay schedule "
            "(or train without Φ) before exporting"
        )
    scale, zero = layer.weight_quantizer.effective_scale_zero()
    codes = layer.weight_quantizer.codes(layer.weight)
    return PackedLinearWeights(
        name=layer.name,
        in_features=layer.in_features,
        out_features=layer.out_features,
        weight_bits=layer.scheme.weight_bits,
        activation_bits=layer.scheme.activation_bits,
        qweight=pack_codes(codes, layer.scheme.weight_bits).cpu(),
        weight_scale=scale.detach().float().reshape(-1).cpu().clone(),
        weight_zero_point=zero.detach().float().reshape(-1).cpu().clone(),
        act_clip=layer.act_quantizer.clip_table().detach().float().cpu().clone(),
        bias=None if layer.bias is None else layer.bias.detach().float().cpu().clone(),
    )


def diffusers_config(model: nn.Module) -> dict[str, Any]:
    """The model's diffusers config with its class name, as ``save_pretrained`` writes it."""
    config = getattr(model, "config", None)
    if config is None:
        raise CheckpointError(f"{type(model).__name__} has no diffusers config to store")
    out = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    out["_class_name"] = type(model).__name__
    return out


def packed_checkpoint(model: nn.Module) -> PackedCheckpoint:
    """Collect the packed layers and plain tensors of ``model`` (see module docstring)."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers:
        raise CheckpointError("the model has no QuantLinear layer: nothing to export")
    schemes = {
        (m.scheme.weight_bits, m.scheme.activation_bits, m.scheme.clip_groups) for m in layers
    }
    if len(schemes) != 1:
        raise CheckpointError(f"format v1 stores one scheme per model, found {sorted(schemes)}")
    (w_bits, a_bits, groups) = schemes.pop()
    owned = {f"{m.name}.": m for m in layers}
    tensors = {
        key: value
        for key, value in model.state_dict().items()
        if not any(key.startswith(prefix) for prefix in owned)
    }
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{key} holds NaN or inf")
    return PackedCheckpoint(
        config=diffusers_config(model),
        scheme=PackedScheme(weight_bits=w_bits, activation_bits=a_bits, clip_groups=groups),
        layers={m.name: pack_layer(m) for m in layers},
        full_precision_modules=tuple(plain_linears(model)),
        tensors={k: v.detach().cpu() for k, v in tensors.items()},
    )


def export_packed(model: nn.Module, out_dir: str | Path) -> Path:
    """Write ``model`` (Φ-free, with QuantLinear layers) as a format-v1 directory."""
    return write_packed(packed_checkpoint(model), out_dir)
