"""Per-model data that pass-saving policies need: ``cache_calibration.json`` in a pipeline directory.

MagCache (Ma et al. 2025; diffusers' ``MagCacheConfig``) skips a transformer pass when the
accumulated change it predicts stays under a threshold. Its prediction is a table of *magnitude
ratios*, one per denoising step i of an N-step schedule::

    γ_i = mean over tokens of ‖r_i‖₂ / ‖r_{i−1}‖₂        (γ_0 = 1)

where r_i = (output of the last block − input of the first block) of step i's call. The table
depends on the model, its scheduler and the step count, so it is measured here on the model
itself (``qvgen calibrate-cache``) and stored beside its components, never guessed. The file::

    {"format": "qvgen-cache-calibration", "format_version": 1,
     "magcache": [{"num_inference_steps": 20, "guidance_scale": 5.0, "size": "64x64",
                   "num_frames": 17, "prompts": 8,
                   "ratios": {"cond": [1.0, ...], "uncond": [1.0, ...]},
                   "mag_ratios": [1.0, ...]}]}

``ratios`` holds each guidance branch's mean over the calibration prompts; ``mag_ratios``, what
the engine hands diffusers (whose one table serves both branches), is their mean. One entry per
step count: a request for a step count without an entry is refused (``CachingRules``), since
the per-step ratio depends on the step size.

Export (``qvgen export``) and ``qvgen import-release`` write pipeline directories without it; the
file is added afterwards and nothing else in the directory reads or rejects it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "cache_calibration.json"
FORMAT_NAME = "qvgen-cache-calibration"
FORMAT_VERSION = 1


class CalibrationError(ValueError):
    """The calibration file is malformed or of an unknown format."""


@dataclass(frozen=True)
class MagCacheEntry:
    """MagCache's ratios for one step count (module docstring)."""

    num_inference_steps: int
    guidance_scale: float
    size: str
    num_frames: int
    prompts: int
    ratios: dict[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1 or self.prompts < 1:
            raise CalibrationError(f"MagCache entry {self.num_inference_steps} steps is empty")
        if not self.ratios:
            raise CalibrationError("MagCache entry without ratios")
        for branch, values in self.ratios.items():
            if len(values) != self.num_inference_steps:
                raise CalibrationError(
                    f"MagCache {branch} ratios: {len(values)} values for "
                    f"{self.num_inference_steps} steps"
                )
            if not all(math.isfinite(v) and v > 0 for v in values):
                raise CalibrationError(f"MagCache {branch} ratios must be finite and positive")

    @property
    def mag_ratios(self) -> tuple[float, ...]:
        """The table diffusers gets: the branches' mean at each step."""
        branches = list(self.ratios.values())
        return tuple(sum(v) / len(branches) for v in zip(*branches, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "size": self.size,
            "num_frames": self.num_frames,
            "prompts": self.prompts,
            "ratios": {branch: list(values) for branch, values in self.ratios.items()},
            "mag_ratios": list(self.mag_ratios),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MagCacheEntry:
        try:
            return cls(
                num_inference_steps=int(data["num_inference_steps"]),
                guidance_scale=float(data["guidance_scale"]),
                size=str(data["size"]),
                num_frames=int(data["num_frames"]),
                prompts=int(data["prompts"]),
                ratios={b: tuple(map(float, v)) for b, v in data["ratios"].items()},
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise CalibrationError(f"malformed MagCache entry: {error!r}") from error


@dataclass(frozen=True)
class CacheCalibration:
    """Everything ``cache_calibration.json`` holds; ``magcache`` keyed by step count."""

    magcache: dict[int, MagCacheEntry] = field(default_factory=dict)

    def with_magcache(self, entry: MagCacheEntry) -> CacheCalibration:
        """A copy with ``entry`` added, replacing one of the same step count."""
        return CacheCalibration({**self.magcache, entry.num_inference_steps: entry})

    def to_dict(self) -> dict[str, Any]:
        entries = [self.magcache[steps].to_dict() for steps in sorted(self.magcache)]
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "magcache": entries}


def read_calibration(model_dir: str | os.PathLike[str]) -> CacheCalibration:
    """The directory's calibration; an empty one when it has no file. Raises
    ``CalibrationError`` for a file of another format or version, or a malformed one."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return CacheCalibration()
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise CalibrationError(f"{path} is not JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CalibrationError(f"{path} is not a {FORMAT_NAME} file")
    if data.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(
            f"{path}: format_version {data.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    unknown = sorted(set(data) - {"format", "format_version", "magcache"})
    if unknown:
        raise CalibrationError(f"{path}: unknown keys {unknown}")
    entries = [MagCacheEntry.from_dict(entry) for entry in data.get("magcache", [])]
    return CacheCalibration({entry.num_inference_steps: entry for entry in entries})


def write_calibration(model_dir: str | os.PathLike[str], calibration: CacheCalibration) -> Path:
    """Write ``cache_calibration.json`` into ``model_dir`` atomically; returns its path."""
    path = Path(model_dir) / CALIBRATION_FILE
    text = json.dumps(calibration.to_dict(), indent=2) + "\n"
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
