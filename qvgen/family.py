"""The two model families, and the geometry their configs impose: one module for both halves.

Wan 2.1 and CogVideoX differ in how latents are normalised, how a clean latent is noised
(flow matching vs DDIM v-prediction), the transformer's input layout and the prompt length.
Everything family-specific is dispatched on ``ModelFamily``. ``PipelineGeometry`` maps pixels
to transformer tokens from the VAE and transformer configs alone (no weights loaded):

* width and height must be multiples of ``size_multiple`` = lcm(VAE spatial factor × patch,
  the pipeline's own check: 16 for Wan, 8 for CogVideoX);
* frame counts are n = 1 + k · ``frame_step``: Wan's causal VAE maps 1 + 4k frames to 1 + k
  latent frames (step = temporal factor); CogVideoX's VAE decodes latent frames in pairs after
  an odd first group, so only an odd number of latent frames decodes back to the request
  (step = 2 × temporal factor: 9, 17, …, 49).

Training checks its bucket with it, serving derives the request rules it publishes from it.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
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


# The pipelines' own size checks (``check_inputs``), on top of VAE factor × patch size.
PIPELINE_SIZE_CHECK = {ModelFamily.WAN: 16, ModelFamily.COGVIDEOX: 8}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a diffusers pipeline directory")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def detect_family(model_dir: str | Path) -> ModelFamily:
    """The pipeline family named by ``model_index.json`` in ``model_dir``."""
    index = _read_json(Path(model_dir) / MODEL_INDEX_FILE)
    name = index.get("_class_name")
    try:
        return ModelFamily(name)
    except ValueError:
        allowed = sorted(f.value for f in ModelFamily)
        raise ValueError(
            f"{Path(model_dir) / MODEL_INDEX_FILE}: pipeline class {name!r} is not supported; "
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
        """From the configs in a pipeline directory."""
        root = Path(model_dir)
        return cls.from_configs(
            detect_family(root),
            _read_json(root / "vae" / "config.json"),
            _read_json(root / "transformer" / "config.json"),
        )

    @classmethod
    def from_configs(
        cls, family: ModelFamily, vae: Mapping[str, Any], transformer: Mapping[str, Any]
    ) -> PipelineGeometry:
        """From a VAE and a transformer config (a loaded model's ``.config`` or its JSON)."""
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

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (VAE × patch and the pipeline's check)."""
        return math.lcm(self.spatial_factor * self.patch, PIPELINE_SIZE_CHECK[self.family])

    @property
    def frame_step(self) -> int:
        """Frame counts the pipeline decodes back to the request: 1 + k · frame_step."""
        if self.family is ModelFamily.COGVIDEOX:
            # An even latent count would decode to more frames than asked for.
            return 2 * self.temporal_factor
        return self.temporal_factor

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
