"""What a loaded model accepts: shape rules derived from its config, and caps chosen per family.

Two kinds of rule decide whether a ``GenerationRequest`` can run:

* **Geometry**, dictated by the architecture (``qvgen.family.PipelineGeometry``): the size
  multiple and frame step of the model's VAE and patch, and the prompt length.
* **Limits**, chosen by the operator (``ModelLimits``): maximum size, frames, steps, the
  guidance range and the prompt length. They bound the memory and time a single job may take.
* **Caching** (``CachingRules``): which pass-saving policies this model runs, each policy's
  threshold range, the step counts MagCache is calibrated for, whether guidance may stop early,
  and the model's defaults for all of them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from qvgen.family import ModelFamily
from service.engine.types import CachePolicy, GenerationRequest, InvalidRequest

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
class ThresholdRange:
    """The thresholds one cache policy accepts on a model, low ≤ default ≤ high."""

    low: float
    high: float
    default: float

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.default <= self.high:
            raise ValueError(f"threshold range {self} is not 0 ≤ low ≤ default ≤ high")


@dataclass(frozen=True)
class CachingRules:
    """What a model accepts for ``cache``, ``cache_threshold`` and ``guidance_stop``.

    ``thresholds``: the policies this model runs besides ``none`` (always allowed), each with
    its threshold range; ``magcache_steps``: the step counts MagCache has ratios for (its
    calibration, ``qvgen/checkpoint/cache_calibration.py``); ``guidance_stop``: whether the
    unconditional pass may stop before the last step (Wan's pipeline; CogVideoX batches both
    passes into one call and cannot). ``default_*``: what a request that leaves them out gets.
    """

    thresholds: dict[CachePolicy, ThresholdRange] = dataclasses.field(default_factory=dict)
    magcache_steps: tuple[int, ...] = ()
    guidance_stop: bool = False
    default_cache: CachePolicy = CachePolicy.NONE
    default_cache_threshold: float | None = None
    default_guidance_stop: float = 1.0

    def __post_init__(self) -> None:
        if self.default_cache is not CachePolicy.NONE:
            if self.default_cache not in self.thresholds:
                raise ValueError(f"default cache {self.default_cache.value!r} is not offered")
            rule = self.thresholds[self.default_cache]
            threshold = self.default_cache_threshold
            if threshold is not None and not rule.low <= threshold <= rule.high:
                raise ValueError(
                    f"default cache threshold {threshold} is outside [{rule.low}, {rule.high}]"
                )
        if not 0 <= self.default_guidance_stop <= 1:
            raise ValueError(f"default guidance_stop {self.default_guidance_stop} is not in [0, 1]")
        if self.default_guidance_stop < 1 and not self.guidance_stop:
            raise ValueError("a default guidance_stop below 1 on a model that cannot stop early")

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": {
                policy.value: dataclasses.asdict(rule) for policy, rule in self.thresholds.items()
            },
            "magcache_steps": list(self.magcache_steps),
            "guidance_stop": self.guidance_stop,
            "default_cache": self.default_cache.value,
            "default_cache_threshold": self.default_cache_threshold,
            "default_guidance_stop": self.default_guidance_stop,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CachingRules:
        thresholds = {
            CachePolicy(name): ThresholdRange(**rule) for name, rule in data["thresholds"].items()
        }
        return cls(
            thresholds=thresholds,
            magcache_steps=tuple(data["magcache_steps"]),
            guidance_stop=data["guidance_stop"],
            default_cache=CachePolicy(data["default_cache"]),
            default_cache_threshold=data["default_cache_threshold"],
            default_guidance_stop=data["default_guidance_stop"],
        )


@dataclass(frozen=True)
class EngineRules:
    """Everything ``check_request`` holds a request to on one loaded model. Workers publish it
    (``to_dict``) so that clients can offer only requests that will run."""

    geometry: ModelGeometry
    limits: ModelLimits
    caching: CachingRules = dataclasses.field(default_factory=CachingRules)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            "geometry": dataclasses.asdict(self.geometry),
            "limits": dataclasses.asdict(self.limits),
            "caching": self.caching.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineRules:
        """Inverse of ``to_dict``; a missing or unknown field raises ``TypeError``/``KeyError``.
        Rules without ``caching`` (published by a worker of an earlier version) offer none."""
        caching = CachingRules.from_dict(data["caching"]) if "caching" in data else CachingRules()
        return cls(
            geometry=ModelGeometry(**data["geometry"]),
            limits=ModelLimits(**data["limits"]),
            caching=caching,
        )


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


def _or_values(values: list[str]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


def check_caching(request: GenerationRequest, caching: CachingRules) -> None:
    """Raise ``InvalidRequest`` naming ``cache``, ``cache_threshold`` or ``guidance_stop`` when
    the model cannot run them as asked (the allowed values in the message)."""
    policy = request.cache
    if policy is not CachePolicy.NONE:
        offered = [CachePolicy.NONE.value, *(p.value for p in caching.thresholds)]
        if policy not in caching.thresholds:
            raise InvalidRequest(
                "cache", f"{policy.value!r} is not offered by this model; use {_or_values(offered)}"
            )
        if policy is CachePolicy.MAGCACHE and request.num_inference_steps not in (
            caching.magcache_steps
        ):
            steps = ", ".join(map(str, caching.magcache_steps)) or "none"
            raise InvalidRequest(
                "cache",
                f"magcache is calibrated for num_inference_steps in ({steps}) on this model, "
                f"not {request.num_inference_steps}; use one of those step counts or another "
                f"policy ({_or_values([v for v in offered if v != policy.value])})",
            )
    threshold = request.cache_threshold
    if threshold is not None:
        if policy is CachePolicy.NONE:
            raise InvalidRequest(
                "cache_threshold", "only applies with a cache policy other than none"
            )
        rule = caching.thresholds[policy]
        _check_range("cache_threshold", threshold, rule.low, rule.high)
    _check_range("guidance_stop", request.guidance_stop, 0.0, 1.0)
    if request.guidance_stop < 1 and not caching.guidance_stop:
        raise InvalidRequest(
            "guidance_stop",
            f"{request.guidance_stop} is not allowed: this model runs guidance in every step "
            "(its pipeline batches both passes); use 1",
        )


def check_request(
    request: GenerationRequest,
    geometry: ModelGeometry,
    limits: ModelLimits,
    caching: CachingRules | None = None,
) -> None:
    """Raise ``InvalidRequest`` (a ``ValueError``) naming the first field the model can't run;
    ``caching`` None offers no cache policy and no early guidance stop."""
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
    check_caching(request, caching or CachingRules())
