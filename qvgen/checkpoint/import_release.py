"""Import a checkpoint in the layout of the QVGen authors' public release into format v1.

Their ``diffusion_pytorch_model.safetensors`` holds, for each quantized linear at path ``P``:
``P.w`` (latent weight), ``P.b`` (bias, optional), ``P.wquantizer.scale`` and
``P.wquantizer.zero_point`` ([out, 1], float zero point, q = clamp(round(w/s + z), 0, 2^b − 1)),
``P.aquantizer.lower`` and ``P.aquantizer.upper`` (one clip logit per timestep group), and
optionally ``P.loraA.weight`` [r, in] / ``P.loraB.weight`` [out, r], merged as W ← W + B·A
before quantizing. A layer without ``P.wquantizer.scale`` is full precision and stored under
its usual names.

The bits are not recorded in their files, so the caller states them. Their clip logits become
our factors α = sigmoid(logit), column 0 lower, column 1 upper. The release indexed groups by
``t mod 50`` in training, which is not our mapping (``qvgen.timestep_groups``): an imported table
is read under ours, so its per-group factors serve other timesteps than they were fitted on; a
short QAT run from the imported weights re-fits them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from torch import nn

from qvgen.checkpoint.format_v1 import (
    CheckpointError,
    PackedCheckpoint,
    PackedScheme,
    write_packed,
)
from qvgen.numerics import check_bits, weight_codes
from qvgen.packed_layer import PackedLinearWeights
from qvgen.packing import pack_codes

SCALE_SUFFIX = ".wquantizer.scale"
LAYER_KEYS = (
    "w",
    "b",
    "wquantizer.scale",
    "wquantizer.zero_point",
    "aquantizer.lower",
    "aquantizer.upper",
    "loraA.weight",
    "loraB.weight",
)


def _linear_names(config: dict[str, Any]) -> list[str]:
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if not isinstance(cls, type):
        raise CheckpointError(
            f"config names an unknown transformer class {config.get('_class_name')!r}"
        )
    with init_empty_weights():
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})  # type: ignore[attr-defined]
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _import_layer(
    name: str, state: dict[str, torch.Tensor], w_bits: int, a_bits: int
) -> PackedLinearWeights:
    def take(key: str, required: bool = True) -> torch.Tensor | None:
        full = f"{name}.{key}"
        if full not in state:
            if required:
                raise CheckpointError(f"{name}: missing {full}")
            return None
        return state.pop(full)

    weight = take("w")
    assert weight is not None
    weight = weight.float()
    lora_a, lora_b = take("loraA.weight", False), take("loraB.weight", False)
    if (lora_a is None) != (lora_b is None):
        raise CheckpointError(f"{name}: loraA and loraB must come together")
    if lora_a is not None and lora_b is not None:
        weight = weight + lora_b.float() @ lora_a.float()
    scale = take("wquantizer.scale")
    zero = take("wquantizer.zero_point")
    lower, upper = take("aquantizer.lower"), take("aquantizer.upper")
    assert scale is not None and zero is not None and lower is not None and upper is not None
    bias = take("b", False)
    n = weight.shape[0]
    if scale.numel() != n or zero.numel() != n:
        raise CheckpointError(
            f"{name}: scale/zero_point must have {n} entries, got {scale.numel()}/{zero.numel()}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise CheckpointError(f"{name}: weight holds NaN or inf")
    s, z = scale.float().reshape(n, 1), zero.float().reshape(n, 1)
    codes = weight_codes(weight, s, z, w_bits)
    clip = torch.sigmoid(torch.stack([lower.float().reshape(-1), upper.float().reshape(-1)], dim=1))
    try:
        return PackedLinearWeights(
            name=name,
            in_features=weight.shape[1],
            out_features=n,
            weight_bits=w_bits,
            activation_bits=a_bits,
            qweight=pack_codes(codes, w_bits),
            weight_scale=s.reshape(n).contiguous(),
            weight_zero_point=z.reshape(n).contiguous(),
            act_clip=clip.contiguous(),
            bias=None if bias is None else bias.float().contiguous(),
        )
    except ValueError as err:
        raise CheckpointError(str(err)) from err


def import_release_state(
    state: dict[str, torch.Tensor], config: dict[str, Any], weight_bits: int, activation_bits: int
) -> PackedCheckpoint:
    """Convert a release-layout state dict (consumed) and its diffusers config."""
    check_bits(weight_bits, "weight_bits")
    check_bits(activation_bits, "activation_bits")
    state = dict(state)
    names = sorted(k[: -len(SCALE_SUFFIX)] for k in state if k.endswith(SCALE_SUFFIX))
    if not names:
        raise CheckpointError(f"no '*{SCALE_SUFFIX}' tensor: not a QVGen release checkpoint")
    layers = {name: _import_layer(name, state, weight_bits, activation_bits) for name in names}
    groups = {layer.clip_groups for layer in layers.values()}
    if len(groups) != 1:
        raise CheckpointError(f"layers disagree on the number of clip groups: {sorted(groups)}")
    leftovers = sorted(k for k in state if any(k.startswith(f"{n}.") for n in names))
    if leftovers:
        raise CheckpointError(f"unexpected tensors of quantized layers: {leftovers}")
    full_precision = [n for n in _linear_names(config) if n not in layers]
    return PackedCheckpoint(
        config=dict(config),
        scheme=PackedScheme(weight_bits, activation_bits, clip_groups=groups.pop()),
        layers=layers,
        full_precision_modules=tuple(full_precision),
        tensors=state,
    )


def import_release(
    checkpoint_file: str | Path,
    config_file: str | Path,
    out_dir: str | Path,
    weight_bits: int,
    activation_bits: int,
) -> Path:
    """Read a release ``.safetensors`` and its ``config.json``; write format v1 to ``out_dir``."""
    config = json.loads(Path(config_file).read_text())
    packed = import_release_state(
        load_file(str(checkpoint_file)), config, weight_bits, activation_bits
    )
    return write_packed(packed, out_dir)
