"""What a training run is: one frozen, validated ``TrainConfig``, saved beside its outputs.

Every field is checked when the config is built, and the error names the command-line flag, the
bad value and the allowed range, so ``qvgen train`` fails before loading a model. The config is
written to ``<out>/config.json``; ``--resume`` reads it back and refuses flags that disagree with
it (a resumed run that silently changed its learning rate would not be the run it claims to be).

Methods (the paper's comparison):

* ``qvgen``: QAT with the auxiliary module Φ of initial rank r, removed by rank decay;
* ``lsq``: the same QAT without Φ (rank 0) — the LSQ baseline;
* ``rtn``: round-to-nearest min-max post-training quantization, no training at all.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from qvgen.layer_policy import LayerPolicy
from training.quant.config import QuantScheme
from training.quant.rank_decay import DecayShape, RankDecaySchedule

CONFIG_FILE = "config.json"
CONFIG_VERSION = 1


class Method(enum.Enum):
    QVGEN = "qvgen"
    LSQ = "lsq"
    RTN = "rtn"


class Parallelism(enum.Enum):
    """How the student is spread over the processes of a ``torchrun`` launch."""

    DDP = "ddp"  # every process holds the whole model; gradients are all-reduced
    FSDP = "fsdp"  # parameters, gradients and optimizer state are sharded (FSDP2)


class LayerSelection(enum.Enum):
    BLOCKS = "blocks"  # ``LayerPolicy()``: the linears inside the transformer blocks
    ALL = "all"  # every nn.Linear, as the released recipe

    def policy(self) -> LayerPolicy:
        return LayerPolicy() if self is LayerSelection.BLOCKS else LayerPolicy.everything()


def _check_int(flag: str, value: Any, low: int, high: int | None = None) -> None:
    upper = "∞" if high is None else str(high)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        raise ValueError(f"{flag} must be an integer in [{low}, {upper}], got {value!r}")


def _check_float(flag: str, value: Any, low: float, high: float, *, open_low: bool) -> None:
    ok = isinstance(value, int | float) and (value > low if open_low else value >= low)
    if not ok or value > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"{flag} must lie in {bracket}{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole run. Learning rates and optimiser settings default to the QVGen recipe.

    ``steps`` is None only for ``rtn``; ``phase_steps`` None derives T = ⌊steps / phases⌋.
    ``batch_size`` is per process; the global batch is batch_size × world size.
    """

    model: str
    out: str
    data: str | None = None
    method: Method = Method.QVGEN
    w_bits: int = 4
    a_bits: int = 4
    rank: int = 32
    steps: int | None = None
    phase_steps: int | None = None
    decay_shape: DecayShape = DecayShape.COSINE
    layers: LayerSelection = LayerSelection.BLOCKS
    clip_groups: int = 50
    frames: int = 49
    height: int = 480
    width: int = 832
    batch_size: int = 1
    lr: float = 3e-5
    lr_clip: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 1e-4
    eps: float = 1e-8
    warmup: float = 0.1
    grad_clip: float = 1.0
    caption_dropout: float = 0.05
    checkpoint_every: int = 500
    gradient_checkpointing: bool = True
    parallel: Parallelism = Parallelism.DDP
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for flag, value in (("--w-bits", self.w_bits), ("--a-bits", self.a_bits)):
            _check_int(flag, value, 2, 8)
        _check_int("--clip-groups", self.clip_groups, 1, 1000)
        _check_int("--frames", self.frames, 1, 1024)
        _check_int("--height", self.height, 8, 8192)
        _check_int("--width", self.width, 8, 8192)
        _check_int("--batch-size", self.batch_size, 1, 4096)
        _check_int("--checkpoint-every", self.checkpoint_every, 1)
        _check_int("--seed", self.seed, 0, 2**63 - 1)
        _check_float("--lr", self.lr, 0.0, 1.0, open_low=True)
        _check_float("--lr-clip", self.lr_clip, 0.0, 1.0, open_low=True)
        _check_float("--beta1", self.beta1, 0.0, 0.999999, open_low=False)
        _check_float("--beta2", self.beta2, 0.0, 0.999999, open_low=False)
        _check_float("--weight-decay", self.weight_decay, 0.0, 1.0, open_low=False)
        _check_float("--eps", self.eps, 0.0, 1.0, open_low=True)
        _check_float("--warmup", self.warmup, 0.0, 0.99, open_low=False)
        _check_float("--grad-clip", self.grad_clip, 0.0, 1e6, open_low=True)
        _check_float("--caption-dropout", self.caption_dropout, 0.0, 1.0, open_low=False)
        self._check_method()

    def _check_method(self) -> None:
        if self.method is Method.RTN:
            if self.steps is not None or self.phase_steps is not None:
                raise ValueError("--method rtn trains nothing: drop --steps and --phase-steps")
            if self.rank != 0:
                raise ValueError(f"--method rtn has no Φ: --rank must be 0, got {self.rank}")
            return
        if self.data is None:
            raise ValueError(f"--method {self.method.value} needs --data (a video folder)")
        _check_int("--steps", self.steps, 1, 10**9)
        if self.method is Method.LSQ and self.rank != 0:
            raise ValueError(f"--method lsq is QAT without Φ: --rank must be 0, got {self.rank}")
        if self.method is Method.QVGEN:
            _check_int("--rank", self.rank, 1, 4096)
        if self.phase_steps is not None:
            _check_int("--phase-steps", self.phase_steps, 1, 10**9)
        assert self.steps is not None
        phases = RankDecaySchedule(self.rank, 1).num_phases
        if self.steps < phases:
            raise ValueError(
                f"--steps {self.steps} cannot hold the {phases} rank-decay phases of --rank "
                f"{self.rank} (≥ 1 step each): use --steps ≥ {phases} or a smaller --rank"
            )
        schedule = self.schedule()
        if schedule.phi_free_step > self.steps:
            raise ValueError(
                f"--phase-steps {schedule.phase_steps} × {schedule.num_phases} rank-decay phases "
                f"= {schedule.phi_free_step} steps > --steps {self.steps}: Φ would remain at the "
                f"end and the model could not be exported; use --phase-steps ≤ "
                f"{self.steps // max(1, schedule.num_phases)}"
            )

    @property
    def trains(self) -> bool:
        return self.method is not Method.RTN

    @property
    def total_steps(self) -> int:
        return 0 if self.steps is None else self.steps

    def scheme(self) -> QuantScheme:
        if self.method is Method.RTN:
            return QuantScheme.rtn(self.w_bits, self.a_bits, self.clip_groups)
        return QuantScheme(
            weight_bits=self.w_bits, activation_bits=self.a_bits, clip_groups=self.clip_groups
        )

    def schedule(self) -> RankDecaySchedule:
        """Φ's rank-decay schedule (initial rank 0 for lsq and rtn: Φ never exists)."""
        if self.phase_steps is not None:
            return RankDecaySchedule(self.rank, self.phase_steps, self.decay_shape)
        if self.rank == 0 or self.steps is None:
            return RankDecaySchedule(0, 1, self.decay_shape)
        return RankDecaySchedule.for_total_steps(self.rank, self.steps, self.decay_shape)

    def to_dict(self) -> dict[str, Any]:
        out = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}
        out["config_version"] = CONFIG_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values = dict(data)
        version = values.pop("config_version", None)
        if version != CONFIG_VERSION:
            raise ValueError(f"config_version {version!r} is not {CONFIG_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(known)}")
        enums: dict[str, type[enum.Enum]] = {
            "method": Method,
            "decay_shape": DecayShape,
            "layers": LayerSelection,
            "parallel": Parallelism,
        }
        for key, enum_cls in enums.items():
            if key in values:
                values[key] = enum_cls(values[key])
        return cls(**values)

    def save(self, out_dir: Path) -> Path:
        path = out_dir / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, out_dir: Path) -> TrainConfig:
        path = out_dir / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: nothing to resume in {out_dir}")
        return cls.from_dict(json.loads(path.read_text()))

    def differences(self, other: TrainConfig) -> list[str]:
        """``field: mine != theirs`` for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
