"""Quantization schemes as validated, frozen types.

A ``QuantScheme`` says how every quantized linear of a model is quantized: bits, quantizer kind
for weights and activations, and the activation-clip groups. Built from a mapping with
``QuantScheme.from_dict`` (unknown keys raise), written back with ``to_dict``.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any

from qvgen.numerics import check_bits
from qvgen.timestep_groups import DEFAULT_GROUPS


class Granularity(enum.Enum):
    """Which axis owns a quantizer's scale and zero point."""

    PER_CHANNEL = "per_channel"  # one per output channel of a weight
    PER_TOKEN = "per_token"  # one per row (token) of an activation, computed at run time


class WeightQuantizerKind(enum.Enum):
    """How weight scale and zero point are found."""

    LSQ_PLUS = "lsq_plus"  # learnable scale and float zero point, MSE-search initialisation
    MINMAX = "minmax"  # round-to-nearest over the channel's [min, max]: the PTQ baseline


class ActivationQuantizerKind(enum.Enum):
    """How the per-token range of activations is clipped."""

    LEARNED_CLIP = "learned_clip"  # learnable sigmoid clip factors per timestep group
    MINMAX = "minmax"  # the token's full [min, max]: the PTQ baseline


def _reject_unknown(cls: type, data: dict[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; allowed: {sorted(known)}")


@dataclass(frozen=True)
class QuantScheme:
    """How the quantized linears of a model are quantized.

    weight_bits / activation_bits: 2..8.
    clip_groups: number of timestep groups G of the activation clip table (≥ 1).
    clip_init: initial clip factor α for both ends, in (0, 1] (0.95 in the QVGen recipe).
    mse_candidates / mse_norm: the weight initialisation searches clip ratios
    p = 1 − i/100, i = 0..mse_candidates−1, minimising Σ|Q(w) − w|^mse_norm per channel.
    """

    weight_bits: int = 4
    activation_bits: int = 4
    weight_quantizer: WeightQuantizerKind = WeightQuantizerKind.LSQ_PLUS
    activation_quantizer: ActivationQuantizerKind = ActivationQuantizerKind.LEARNED_CLIP
    weight_granularity: Granularity = Granularity.PER_CHANNEL
    activation_granularity: Granularity = Granularity.PER_TOKEN
    clip_groups: int = DEFAULT_GROUPS
    clip_init: float = 0.95
    mse_candidates: int = 80
    mse_norm: float = 2.4

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.activation_bits, "activation_bits")
        if self.weight_granularity is not Granularity.PER_CHANNEL:
            raise ValueError(
                f"weight_granularity must be per_channel, got {self.weight_granularity.value}"
            )
        if self.activation_granularity is not Granularity.PER_TOKEN:
            raise ValueError(
                f"activation_granularity must be per_token, got {self.activation_granularity.value}"
            )
        if not isinstance(self.clip_groups, int) or not 1 <= self.clip_groups <= 1000:
            raise ValueError(
                f"clip_groups must be an integer in [1, 1000], got {self.clip_groups!r}"
            )
        if not 0.0 < self.clip_init <= 1.0:
            raise ValueError(f"clip_init must lie in (0, 1], got {self.clip_init!r}")
        if not 1 <= self.mse_candidates <= 100:
            raise ValueError(f"mse_candidates must lie in [1, 100], got {self.mse_candidates!r}")
        if not self.mse_norm > 0:
            raise ValueError(f"mse_norm must be > 0, got {self.mse_norm!r}")

    @property
    def label(self) -> str:
        """Short name such as ``W4A4``."""
        return f"W{self.weight_bits}A{self.activation_bits}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantScheme:
        """Build from plain values (enum values as strings); unknown keys raise ``ValueError``."""
        _reject_unknown(cls, data)
        enums = {
            "weight_quantizer": WeightQuantizerKind,
            "activation_quantizer": ActivationQuantizerKind,
            "weight_granularity": Granularity,
            "activation_granularity": Granularity,
        }
        values = dict(data)
        for key, enum_cls in enums.items():
            if key in values and not isinstance(values[key], enum_cls):
                try:
                    values[key] = enum_cls(values[key])
                except ValueError:
                    allowed = [e.value for e in enum_cls]
                    raise ValueError(f"{key}: {values[key]!r} is not one of {allowed}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def rtn(
        cls, weight_bits: int, activation_bits: int, clip_groups: int = DEFAULT_GROUPS
    ) -> QuantScheme:
        """The round-to-nearest min-max baseline (no learnable quantizer parameter)."""
        return cls(
            weight_bits=weight_bits,
            activation_bits=activation_bits,
            weight_quantizer=WeightQuantizerKind.MINMAX,
            activation_quantizer=ActivationQuantizerKind.MINMAX,
            clip_groups=clip_groups,
        )
