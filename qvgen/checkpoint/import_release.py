"""Import a checkpoint in the layout of the QVGen authors' public release into format v1.

Their ``diffusion_pytorch_model.safetensors`` holds, for each quantized linear at path ``P``:
``P.w`` (latent weight), ``P.b`` (bias, optional), ``P.wquantizer.scale`` and
``P.wquantizer.zero_point`` ([out, 1], float zero point, q = clamp(round(w/s + z), 0, 2^b − 1)),
``P.aquantizer.lower`` and ``P.aquantizer.upper`` (one clip logit per timestep group), and
optionally ``P.loraA.weight`` [r, in] / ``P.loraB.weight`` [out, r], merged as W ← W + B·A
before quantizing. A layer without ``P.wquantizer.scale`` is full precision and stored under
its usual names.

The bits are not recorded in their files, so the caller states them (``ReleaseImport``).

**Activations.** Their per-token range is clip_ratio · sigmoid(logit) · min_k x (and · max_k x),
with clip_ratio = 0.95 in their inference scripts; our factors are therefore
α = clip_ratio · sigmoid(logit) ∈ (0, 0.95], column 0 lower, column 1 upper, and the rest of the
per-token quantization is ``qvgen.numerics.quantize_tokens``.

**Weights.** Their model runs in bfloat16: the latent weight (LoRA merged in the file's dtype, as
their loader does) and the quantizer parameters are cast to bf16 and the codes are
q = clamp(round(w / s + z), 0, 2^b − 1) in bf16 arithmetic with round-half-to-even
(``torch.round``). ``WeightArithmetic.BF16`` reproduces those codes exactly; ``FP32`` computes
the same expression in float32 (their modules run in fp32). Each code is stored as it is, so the
served weight s · (q − z) is theirs; our activation codes round ties half up in float32 where
theirs round half to even in the model's dtype (a tie needs x / s_x to land on a half integer).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
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
from qvgen.numerics import check_bits, qmax
from qvgen.packed_layer import PackedLinearWeights
from qvgen.packing import pack_codes

SCALE_SUFFIX = ".wquantizer.scale"
# Their inference scripts' ``--clip_ratio``.
RELEASE_CLIP_RATIO = 0.95
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


class WeightArithmetic(enum.Enum):
    """Where the release's weight codes are computed (module docstring)."""

    BF16 = "bf16"  # their inference scripts: the model in bfloat16
    FP32 = "fp32"  # their modules in float32

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self is WeightArithmetic.BF16 else torch.float32


@dataclass(frozen=True)
class ReleaseImport:
    """How to read a release file: the bits it was trained at (its files do not say), its clip
    ratio and the arithmetic of its weight codes."""

    weight_bits: int = 4
    activation_bits: int = 4
    clip_ratio: float = RELEASE_CLIP_RATIO
    arithmetic: WeightArithmetic = WeightArithmetic.BF16

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.activation_bits, "activation_bits")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio must lie in (0, 1], got {self.clip_ratio}")


def release_weight_codes(
    weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, dtype: torch.dtype
) -> torch.Tensor:
    """q = clamp(round_half_even(w / s + z), 0, 2^b − 1) in ``dtype``; float32 [N, K] codes."""
    w, s, z = weight.to(dtype), scale.to(dtype), zero.to(dtype)
    return torch.clamp(torch.round(w / s + z), 0, qmax(bits)).float()


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
    name: str, state: dict[str, torch.Tensor], options: ReleaseImport
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
    lora_a, lora_b = take("loraA.weight", False), take("loraB.weight", False)
    if (lora_a is None) != (lora_b is None):
        raise CheckpointError(f"{name}: loraA and loraB must come together")
    if lora_a is not None and lora_b is not None:
        # Merged in the file's dtype, as their loader does before the model casts it.
        weight = lora_b.to(weight.dtype) @ lora_a.to(weight.dtype) + weight
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
    dtype = options.arithmetic.dtype
    # The served weight is s · (q − z) with s and z as the model holds them (in its dtype).
    s = scale.to(dtype).float().reshape(n, 1)
    z = zero.to(dtype).float().reshape(n, 1)
    codes = release_weight_codes(
        weight, scale.reshape(n, 1), zero.reshape(n, 1), options.weight_bits, dtype
    )
    logits = torch.stack([lower.float().reshape(-1), upper.float().reshape(-1)], dim=1)
    clip = options.clip_ratio * torch.sigmoid(logits)
    try:
        return PackedLinearWeights(
            name=name,
            in_features=weight.shape[1],
            out_features=n,
            weight_bits=options.weight_bits,
            activation_bits=options.activation_bits,
            qweight=pack_codes(codes, options.weight_bits),
            weight_scale=s.reshape(n).contiguous(),
            weight_zero_point=z.reshape(n).contiguous(),
            act_clip=clip.contiguous(),
            bias=None if bias is None else bias.float().contiguous(),
        )
    except ValueError as err:
        raise CheckpointError(str(err)) from err


def import_release_state(
    state: dict[str, torch.Tensor], config: dict[str, Any], options: ReleaseImport
) -> PackedCheckpoint:
    """Convert a release-layout state dict and its diffusers config."""
    state = dict(state)
    names = sorted(k[: -len(SCALE_SUFFIX)] for k in state if k.endswith(SCALE_SUFFIX))
    if not names:
        raise CheckpointError(f"no '*{SCALE_SUFFIX}' tensor: not a QVGen release checkpoint")
    layers = {name: _import_layer(name, state, options) for name in names}
    groups = {layer.clip_groups for layer in layers.values()}
    if len(groups) != 1:
        raise CheckpointError(f"layers disagree on the number of clip groups: {sorted(groups)}")
    leftovers = sorted(k for k in state if any(k.startswith(f"{n}.") for n in names))
    if leftovers:
        raise CheckpointError(f"unexpected tensors of quantized layers: {leftovers}")
    full_precision = [n for n in _linear_names(config) if n not in layers]
    return PackedCheckpoint(
        config=dict(config),
        scheme=PackedScheme(options.weight_bits, options.activation_bits, clip_groups=groups.pop()),
        layers=layers,
        full_precision_modules=tuple(full_precision),
        tensors=state,
    )


def import_release(
    checkpoint_file: str | Path,
    config_file: str | Path,
    out_dir: str | Path,
    options: ReleaseImport | None = None,
) -> Path:
    """Read a release ``.safetensors`` and its ``config.json``; write format v1 to ``out_dir``."""
    config = json.loads(Path(config_file).read_text())
    packed = import_release_state(
        load_file(str(checkpoint_file)), config, options or ReleaseImport()
    )
    return write_packed(packed, out_dir)
