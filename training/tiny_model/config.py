"""What one run of the qvgen-tiny recipe is: a frozen, validated ``RecipeConfig``.

Defaults are the run that made the shipped ``models/qvgen-tiny`` (see README.md, "qvgen-tiny").
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "recipe.json"


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
    vae_seconds: float = 1e9
    flow_seconds: float = 1e9

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

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}

    def save(self, out_dir: Path) -> None:
        (out_dir / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
