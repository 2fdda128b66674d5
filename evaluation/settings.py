"""What every generation of an evaluation uses besides its prompt and seed: one type for
``qvgen eval`` and ``qvgen tiny compare``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EvalSettings:
    """Size, length, steps and guidance of every clip; fields named as ``GenerationRequest``'s.

    Raises ``ValueError`` naming the field when a size, count or step is < 1 or the guidance
    scale is negative or not finite.
    """

    width: int = 832
    height: int = 480
    num_frames: int = 17
    num_inference_steps: int = 50
    guidance_scale: float = 5.0

    def __post_init__(self) -> None:
        for name in ("width", "height", "num_frames", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be finite and ≥ 0, got {self.guidance_scale}")

    def request_fields(self) -> dict[str, Any]:
        """The settings as ``GenerationRequest`` keyword arguments."""
        return asdict(self)
