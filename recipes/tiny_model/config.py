"""What one run of the qvgen-tiny recipe is: a frozen, validated ``RecipeConfig``, and what one
command of it does: a ``RunScope``.

Defaults are the run that made the shipped ``models/qvgen-tiny`` (see README.md, "qvgen-tiny").
A recipe may be split over several commands (a lent GPU allows 10 minutes a command): every
piece runs the same ``RecipeConfig``, and its ``RunScope`` says where the piece starts and stops.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "recipe.json"
PIPELINE_DIR = "pipeline"
UNLIMITED_SECONDS = 1e9  # the default of --vae-seconds and --flow-seconds: no time budget

# Fields that shape the transformer stage's trajectory: the pieces of one split run must agree on
# them (``flow_state``). The VAE's fields are not among them: a resumed run keeps its encoders,
# whose identity the state checks by fingerprint; the seconds and workers change no number.
TRANSFORMER_FIELDS = (
    "spec", "seed", "data_seed", "clips", "frames", "side", "flow_steps", "flow_batch", "flow_lr",
    "caption_dropout", "ema_decay", "warmup_steps",
)  # fmt: skip
# Fields that fix the clips whose posterior means gave the VAE its latent mean and std.
DATA_FIELDS = ("spec", "data_seed", "clips", "frames", "side")


class SpecName(enum.Enum):
    TINY = "tiny"  # the shipped model
    TOY = "toy"  # smallest sizes: tests and dry runs


def _check(flag: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{flag} must lie in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class RecipeConfig:
    """Both stages of the base model's training.

    VAE stage: ``vae_steps`` AdamW steps of batch ``vae_batch`` on clips (windows of
    ``vae_frames`` frames, whole clips for the last ``vae_full_fraction`` of the steps), loss
    L1 + MSE (object pixels weighted ×``object_weight``) + ``kl_weight``·KL.
    Flow stage: ``flow_steps`` steps of batch ``flow_batch`` of flow matching on the VAE latents,
    caption dropout ``caption_dropout``, EMA of the weights with decay ``ema_decay`` (shipped).
    """

    spec: SpecName = SpecName.TINY
    seed: int = 0
    data_seed: int = 1000  # clips of the training set: dataset.clip_spec(data_seed, i)
    clips: int = 12000
    frames: int = 17
    side: int = 64
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_frames: int = 9
    vae_full_fraction: float = 0.3
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    object_weight: float = 5.0
    flow_steps: int = 8000
    flow_batch: int = 128
    flow_lr: float = 8e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    warmup_steps: int = 200
    workers: int = 1
    # Each stage's step count is cut to what fits this many seconds, measured over its first
    # steps, and the stage stops when they are spent (``progress.StepBudget``; logged as
    # "steps_cut_to" and "stopped_at_deadline"): for machines lent by the minute.
    vae_seconds: float = UNLIMITED_SECONDS
    flow_seconds: float = UNLIMITED_SECONDS

    def __post_init__(self) -> None:
        _check("--seed", self.seed, 0, 2**31 - 1)
        _check("--data-seed", self.data_seed, 0, 2**31 - 1)
        _check("--clips", self.clips, 1, 10**6)
        _check("--vae-steps", self.vae_steps, 1, 10**7)
        _check("--flow-steps", self.flow_steps, 1, 10**7)
        _check("--vae-batch", self.vae_batch, 1, 4096)
        _check("--flow-batch", self.flow_batch, 1, 65536)
        _check("--vae-lr", self.vae_lr, 1e-7, 1.0)
        _check("--flow-lr", self.flow_lr, 1e-7, 1.0)
        _check("--kl-weight", self.kl_weight, 0.0, 1.0)
        _check("--object-weight", self.object_weight, 1.0, 100.0)
        _check("--caption-dropout", self.caption_dropout, 0.0, 0.5)
        _check("--ema-decay", self.ema_decay, 0.0, 0.99999)
        _check("--warmup-steps", self.warmup_steps, 0, 10**6)
        _check("--workers", self.workers, 1, 256)
        _check("--vae-seconds", self.vae_seconds, 1.0, 1e9)
        _check("--vae-full-fraction", self.vae_full_fraction, 0.0, 1.0)
        _check("--flow-seconds", self.flow_seconds, 1.0, 1e9)
        if not 1 <= self.vae_frames <= self.frames or (self.vae_frames - 1) % 4:
            raise ValueError(
                f"--vae-frames must be 4k + 1 in [1, --frames {self.frames}], got {self.vae_frames}"
            )
        if self.frames < 2 or (self.frames - 1) % 4:
            raise ValueError(f"--frames must be 4k + 1 ≥ 5 (VAE ×4 in time), got {self.frames}")
        if self.side < 16 or self.side % 16:
            raise ValueError(f"--side must be a multiple of 16 (VAE ×4, patch 2), got {self.side}")

    def flag(self, field: str) -> str:
        """``--flow-steps 8000``: a field as the command-line flag that sets it."""
        value = getattr(self, field)
        return (
            f"--{field.replace('_', '-')} {value.value if isinstance(value, enum.Enum) else value}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}

    def save(self, out_dir: Path) -> None:
        (out_dir / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass(frozen=True)
class RunScope:
    """Where one ``train-base`` command starts and where it stops; not part of the recipe.

    - ``vae_from``: skip the VAE stage and take the VAE (its latent mean and std included), the
      text encoder and the tokenizer from this pipeline or run directory (``encoders``).
    - ``resume_transformer``: continue the transformer stage of this earlier run directory from
      its ``transformer_state/``, on its ``encoders/`` (``flow_state``).
    - ``vae_only``: stop after the VAE stage; the run's ``encoders/`` is for a later ``vae_from``.
    - ``piece_seconds``: stop the transformer stage after this many seconds and save its state.
      The plan stays ``--flow-steps`` steps: the schedule decays over the whole plan, and a later
      command resumes it. (``--flow-seconds`` instead cuts the plan to fit one command.)
    """

    vae_from: Path | None = None
    resume_transformer: Path | None = None
    vae_only: bool = False
    piece_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.vae_only and (
            self.vae_from is not None
            or self.resume_transformer is not None
            or self.piece_seconds is not None
        ):
            raise ValueError(
                "--vae-only trains the VAE stage alone: it takes no --vae-from, "
                "--resume-transformer or --piece-seconds"
            )
        if self.vae_from is not None and self.resume_transformer is not None:
            raise ValueError(
                f"--vae-from {self.vae_from}: a resumed run keeps the encoders of "
                f"--resume-transformer {self.resume_transformer} (its encoders/); drop --vae-from"
            )
        if self.piece_seconds is not None:
            _check("--piece-seconds", self.piece_seconds, 1.0, UNLIMITED_SECONDS)

    @property
    def in_pieces(self) -> bool:
        """True when this command is a piece of a transformer stage split over commands."""
        return self.piece_seconds is not None or self.resume_transformer is not None

    def check(self, config: RecipeConfig) -> None:
        """Refuse flags of ``config`` that this scope cannot honour."""
        if self.in_pieces and config.flow_seconds != UNLIMITED_SECONDS:
            raise ValueError(
                f"--flow-seconds {config.flow_seconds} cuts the plan of a one-command run to fit "
                "its time; a transformer stage in pieces keeps the plan of --flow-steps and "
                "stops each command with --piece-seconds: drop --flow-seconds"
            )
