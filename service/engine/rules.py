"""What a loaded model accepts: shape rules derived from its config, and caps chosen per family.

Two kinds of rule decide whether a ``GenerationRequest`` can run:

* **Geometry**, dictated by the architecture (``qvgen.family.PipelineGeometry``): the size
  multiple and frame step of the model's VAE and patch, and the prompt length.
* **Limits**, chosen by the operator (``ModelLimits``): maximum size, frames, steps, the
  guidance range and the prompt length. They bound the memory and time a single job may take.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from qvgen.family import ModelFamily
from service.engine.types import GenerationRequest, InvalidRequest

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ModelGeometry:
    """Shape rules of one loaded pipeline (derived from its configs, never typed by hand).

    width % size_multiple == 0, height % size_multiple == 0, (num_frames − 1) % frame_step == 0;
    prompts are encoded to ``text_tokens`` tokens.
    """

    size_multiple: int
    frame_step: int
    text_tokens: int


@dataclass(frozen=True)
class ModelLimits:
    """Operator caps for one model; ``default_limits`` gives each family's."""

    max_width: int
    max_height: int
    max_frames: int
    max_steps: int = 100
    min_guidance: float = 1.0  # 1.0 switches classifier-free guidance off
    max_guidance: float = 20.0
    max_prompt_chars: int = 2000
    min_fps: int = 1
    max_fps: int = 60

    def __post_init__(self) -> None:
        for name in ("max_width", "max_height", "max_frames", "max_steps", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelLimits.{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.min_guidance <= self.max_guidance:
            raise ValueError(
                f"ModelLimits guidance range [{self.min_guidance}, {self.max_guidance}] is empty "
                "or negative"
            )
        if not 1 <= self.min_fps <= self.max_fps:
            raise ValueError(f"ModelLimits fps range [{self.min_fps}, {self.max_fps}] is invalid")


@dataclass(frozen=True)
class EngineRules:
    """Everything ``check_request`` holds a request to on one loaded model. Workers publish it
    (``to_dict``) so that clients can offer only requests that will run."""

    geometry: ModelGeometry
    limits: ModelLimits

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            "geometry": dataclasses.asdict(self.geometry),
            "limits": dataclasses.asdict(self.limits),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineRules:
        """Inverse of ``to_dict``; a missing or unknown field raises ``TypeError``/``KeyError``."""
        return cls(geometry=ModelGeometry(**data["geometry"]), limits=ModelLimits(**data["limits"]))


def default_limits(family: ModelFamily) -> ModelLimits:
    """Caps at the resolutions and lengths each family was trained for (Wan 2.1: 1280×720 at
    81 frames; CogVideoX 1.5: 1360×768 at 81 frames), either orientation."""
    if family is ModelFamily.WAN:
        return ModelLimits(max_width=1280, max_height=1280, max_frames=81)
    return ModelLimits(max_width=1360, max_height=1360, max_frames=81)


def nearest_allowed(value: float, first: int, step: int, last: int) -> tuple[int, ...]:
    """The values ``first + step·k`` in [first, last] nearest to ``value``: the one below and the
    one above it (only one past either end, none when the range is empty)."""
    if last < first:
        return ()
    last = first + (last - first) // step * step
    if value <= first:
        return (first,)
    if value >= last:
        return (last,)
    below = first + math.floor((value - first) / step) * step
    return (below,) if below == value else (below, below + step)


def _check_int(name: str, value: object) -> None:
    # bool is an int subclass; a True width is a caller bug, not a size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(name, f"{value!r} is not an integer")


def _check_size(name: str, value: int, multiple: int, maximum: int) -> None:
    _check_int(name, value)
    if not multiple <= value <= maximum or value % multiple:
        largest = maximum // multiple * multiple
        nearest = ", ".join(map(str, nearest_allowed(value, multiple, multiple, maximum)))
        raise InvalidRequest(
            name,
            f"{value} is not allowed; use a multiple of {multiple} in [{multiple}, {largest}] "
            f"(e.g. {nearest})",
        )


def _check_frames(value: int, step: int, maximum: int) -> None:
    _check_int("num_frames", value)
    if not 1 <= value <= maximum or (value - 1) % step:
        largest = (maximum - 1) // step * step + 1
        nearest = ", ".join(map(str, nearest_allowed(value, 1, step, maximum)))
        raise InvalidRequest(
            "num_frames",
            f"{value} is not allowed; use 1 + {step}·k in [1, {largest}] (e.g. {nearest})",
        )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(name, f"{value!r} is not a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidRequest(name, f"{value} is out of range [{low}, {high}]")


def check_request(request: GenerationRequest, geometry: ModelGeometry, limits: ModelLimits) -> None:
    """Raise ``InvalidRequest`` (a ``ValueError``) naming the first field the model can't run."""
    if not request.prompt.strip():
        raise InvalidRequest("prompt", "must not be empty")
    for name in ("prompt", "negative_prompt"):
        length = len(getattr(request, name))
        if length > limits.max_prompt_chars:
            raise InvalidRequest(
                name, f"{length} characters, more than the limit of {limits.max_prompt_chars}"
            )
    _check_size("width", request.width, geometry.size_multiple, limits.max_width)
    _check_size("height", request.height, geometry.size_multiple, limits.max_height)
    _check_frames(request.num_frames, geometry.frame_step, limits.max_frames)
    for name in ("num_inference_steps", "seed", "fps"):
        _check_int(name, getattr(request, name))
    _check_range("num_inference_steps", request.num_inference_steps, 1, limits.max_steps)
    _check_range("guidance_scale", request.guidance_scale, limits.min_guidance, limits.max_guidance)
    _check_range("seed", request.seed, 0, MAX_SEED)
    _check_range("fps", request.fps, limits.min_fps, limits.max_fps)
