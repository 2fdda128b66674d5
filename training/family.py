"""The two model families training supports, and what a pipeline directory says about them.

Wan 2.1 and CogVideoX differ in how latents are normalised, how a clean latent is noised
(flow matching vs DDIM v-prediction), the transformer's input layout and the prompt length.
Everything family-specific is dispatched on ``ModelFamily``; this module reads the pipeline
directory's configs without loading any weights.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_INDEX_FILE = "model_index.json"
# Wan's text encoder was trained on 512 tokens; its pipeline pads every prompt to that length.
WAN_TEXT_TOKENS = 512


class ModelFamily(enum.Enum):
    """Value: the diffusers pipeline class named in ``model_index.json``."""

    WAN = "WanPipeline"
    COGVIDEOX = "CogVideoXPipeline"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a diffusers pipeline directory")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def detect_family(model_dir: str | Path) -> ModelFamily:
    index = _read_json(Path(model_dir) / MODEL_INDEX_FILE)
    name = index.get("_class_name")
    try:
        return ModelFamily(name)
    except ValueError:
        allowed = sorted(f.value for f in ModelFamily)
        raise ValueError(
            f"{Path(model_dir) / MODEL_INDEX_FILE}: pipeline {name!r} is not supported; "
            f"supported: {allowed}"
        ) from None


@dataclass(frozen=True)
class PipelineGeometry:
    """How pixels map to transformer tokens: VAE factors and the transformer's patch."""

    family: ModelFamily
    spatial_factor: int
    temporal_factor: int
    patch: int
    patch_t: int

    @classmethod
    def read(cls, model_dir: str | Path) -> PipelineGeometry:
        root = Path(model_dir)
        family = detect_family(root)
        vae = _read_json(root / "vae" / "config.json")
        transformer = _read_json(root / "transformer" / "config.json")
        if family is ModelFamily.WAN:
            patch_t, patch_h, patch_w = transformer["patch_size"]
            return cls(
                family,
                int(vae.get("scale_factor_spatial", 8)),
                int(vae.get("scale_factor_temporal", 4)),
                math.lcm(int(patch_h), int(patch_w)),
                int(patch_t),
            )
        spatial = 2 ** (len(vae["block_out_channels"]) - 1)
        return cls(
            family,
            spatial,
            int(vae.get("temporal_compression_ratio", 4)),
            int(transformer["patch_size"]),
            int(transformer.get("patch_size_t") or 1),
        )

    def check_bucket(self, frames: int, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the flag unless the bucket maps to whole tokens."""
        multiple = self.spatial_factor * self.patch
        for flag, value in (("--height", height), ("--width", width)):
            if value % multiple:
                raise ValueError(
                    f"{flag} must be a multiple of {multiple} (VAE ×{self.spatial_factor} × "
                    f"patch {self.patch}) for this {self.family.value}, got {value}"
                )
        if (frames - 1) % self.temporal_factor:
            raise ValueError(
                f"--frames must be {self.temporal_factor}·k + 1 for this {self.family.value}'s "
                f"VAE (×{self.temporal_factor} in time), got {frames}"
            )
        if self.latent_frames(frames) % self.patch_t:
            raise ValueError(
                f"--frames {frames} gives {self.latent_frames(frames)} latent frames, not a "
                f"multiple of the temporal patch {self.patch_t}"
            )

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_factor + 1

    def tokens(self, frames: int, height: int, width: int) -> int:
        """Transformer tokens of one sample of this bucket."""
        h = height // (self.spatial_factor * self.patch)
        w = width // (self.spatial_factor * self.patch)
        return self.latent_frames(frames) // self.patch_t * h * w
