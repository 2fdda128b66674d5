"""The create request against the model's limits, once, before the job is queued.

``GenerationLimits`` (``service.api.schemas``) holds what a model accepts: the API's own bounds,
narrowed by the ``EngineRules`` the model's workers publish. Every rule is checked here, so a
request the API accepts is one the worker's engine runs; an error names the field the client
sent (``seconds``, not the ``num_frames`` it became) and the nearest values that would pass.
The cache fields are checked by the engine's own ``check_caching`` on the rules the limits
publish, and filled in first from the model's defaults, the threshold included: a job's request
says what ran.

The worker's engine still checks the request once (``service.engine.rules.check_request``), as a
guard: when a worker with other rules starts between submit and run (or less than
``service.queue.producer.RULES_MAX_AGE_S`` before the submission, while the API still holds the
rules it read), a job accepted under the old rules fails there with ``invalid_request`` and the
engine's message.
"""

from __future__ import annotations

import dataclasses
import math
import re

from service.api.schemas import GenerationLimits, VideoCreateParams
from service.engine.rules import CachingRules, check_caching, nearest_allowed
from service.engine.types import CachePolicy, GenerationRequest, InvalidRequest
from service.settings import ServiceSettings

_SIZE_RE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")  # ASCII digits only, not \d
# Frames per latent frame of the video VAEs: ``seconds`` becomes 4k + 1 frames (below).
_VAE_FRAMES = 4
# Slack on seconds · fps before rounding up: a ``seconds`` this API reported (six significant
# digits, e.g. "1.71429" for 12 frames at 7 fps) maps back to the frame count it came from.
_FRAME_SLACK = 1e-3


class ParamError(ValueError):
    """A create parameter that passed its own field check but not the model's rules."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def resolve_model(params: VideoCreateParams, settings: ServiceSettings) -> str:
    model = params.model or settings.default_model
    if model not in settings.models:
        raise ParamError("model", f"model {model!r} is not served; served: {list(settings.models)}")
    return model


def frames_for_seconds(seconds: float, fps: int) -> int:
    """4k + 1 frames covering ``seconds`` at ``fps``: the count the video VAEs (Wan, CogVideoX)
    accept, since they compress time by 4 after a first frame of their own."""
    latent = max(1, math.ceil(seconds * fps / _VAE_FRAMES - _FRAME_SLACK))
    return _VAE_FRAMES * latent + 1


def seconds_of(num_frames: int, fps: int) -> str:
    """What the video object reports as ``seconds`` (and ``frames_for_seconds`` maps back)."""
    return f"{(num_frames - 1) / fps:g}" if num_frames > 1 else f"{1 / fps:g}"


def _or(values: tuple[str, ...]) -> str:
    return " or ".join(values)


def _default_note(sent: bool) -> str:
    return "" if sent else " (the server's default)"


def _check_size(size: str, sent: bool, limits: GenerationLimits, model: str) -> tuple[int, int]:
    match = _SIZE_RE.fullmatch(size)
    if match is None:
        raise ParamError("size", f"size must read WIDTHxHEIGHT, e.g. '64x64'; got {size!r}")
    sides = {"width": int(match[1]), "height": int(match[2])}
    maxima = {"width": limits.max_width, "height": limits.max_height}
    multiple = limits.size_multiple
    for name, side in sides.items():
        if limits.min_side <= side <= maxima[name] and side % multiple == 0:
            continue
        nearest = nearest_allowed(side, limits.min_side, multiple, maxima[name])
        options = tuple(
            f"{value}x{sides['height']}" if name == "width" else f"{sides['width']}x{value}"
            for value in nearest
        )
        raise ParamError(
            "size",
            f"{name} {side} in {size!r}{_default_note(sent)} is not allowed for model {model!r} "
            f"(each side a multiple of {multiple} in [{limits.min_side}, {maxima[name]}]): "
            f"use {_or(options)}",
        )
    return sides["width"], sides["height"]


def _check_range(param: str, value: float, low: float, high: float, sent: bool, model: str) -> None:
    if low <= value <= high:
        return
    nearest = low if value < low else high
    raise ParamError(
        param,
        f"{value:g}{_default_note(sent)} is outside model {model!r}'s range [{low:g}, {high:g}]: "
        f"the nearest allowed is {nearest:g}",
    )


def _frame_count(
    params: VideoCreateParams,
    fps: int,
    settings: ServiceSettings,
    limits: GenerationLimits,
    model: str,
) -> int:
    step, maximum = limits.frame_step, limits.max_frames
    if params.seconds is not None:
        frames = frames_for_seconds(params.seconds, fps)
        if frames <= maximum and (frames - 1) % step == 0:
            return frames
        # Seconds reach 1 + 4k frames only; the counts both rules allow are 1 + lcm(4, step)·k.
        grid = math.lcm(_VAE_FRAMES, step)
        nearest = nearest_allowed(frames, 1 + grid, grid, maximum)
        if not nearest:
            raise ParamError(
                "seconds",
                f"model {model!r} makes at most {maximum} frames, fewer than any seconds value "
                f"gives; send num_frames (1 + {step}·k, up to {maximum}) instead",
            )
        options = tuple(seconds_of(n, fps) for n in nearest)
        raise ParamError(
            "seconds",
            f"{params.seconds:g} s at {fps} fps is {frames} frames, which model {model!r} does "
            f"not make (1 + {step}·k frames, at most {maximum}): use {_or(options)}",
        )
    frames = params.num_frames if params.num_frames is not None else settings.default_num_frames
    if 1 <= frames <= maximum and (frames - 1) % step == 0:
        return frames
    counts = tuple(map(str, nearest_allowed(frames, 1, step, maximum)))
    raise ParamError(
        "num_frames",
        f"{frames}{_default_note(params.num_frames is not None)} is not allowed for model "
        f"{model!r} (1 + {step}·k frames, at most {maximum}): use {_or(counts)}",
    )


def _check_prompt(param: str, text: str, limits: GenerationLimits, model: str) -> None:
    if len(text) > limits.max_prompt_chars:
        raise ParamError(
            param,
            f"{len(text)} characters, more than model {model!r} takes; use at most "
            f"{limits.max_prompt_chars}",
        )


def _cache_threshold(policy: CachePolicy, caching: CachingRules) -> float | None:
    """The threshold a request of ``policy`` that names none runs with on this model: the
    model's own default where ``policy`` is its default policy, else the policy's range default
    (None for none, and for a policy the model does not offer, which the check refuses)."""
    if policy not in caching.thresholds:
        return None
    if policy is caching.default_cache and caching.default_cache_threshold is not None:
        return caching.default_cache_threshold
    return caching.thresholds[policy].default


def _with_caching(
    request: GenerationRequest, params: VideoCreateParams, limits: GenerationLimits, model: str
) -> GenerationRequest:
    """``request`` with the cache fields the client sent, the model's defaults for the others,
    checked by the engine's rules (``check_caching``)."""
    caching = limits.caching_rules()
    policy = caching.default_cache if params.cache is None else params.cache
    threshold = params.cache_threshold
    if threshold is None:
        threshold = _cache_threshold(policy, caching)
    guidance_stop = params.guidance_stop
    filled = dataclasses.replace(
        request,
        cache=policy,
        cache_threshold=threshold,
        guidance_stop=caching.default_guidance_stop if guidance_stop is None else guidance_stop,
    )
    try:
        check_caching(filled, caching)
    except InvalidRequest as error:
        message = str(error).removeprefix(f"{error.field}: ")
        if getattr(params, error.field) is None:
            message += f" (left out, {error.field} is the default of model {model!r})"
        raise ParamError(error.field, message) from None
    return filled


def to_generation(
    params: VideoCreateParams, model: str, settings: ServiceSettings, limits: GenerationLimits
) -> tuple[GenerationRequest, str]:
    """The engine request for ``params`` with the settings' defaults filled in (the model's for
    the cache fields), and ``seconds`` as the video object reports it; raise ``ParamError``
    naming the first field ``limits`` refuses."""
    if params.seconds is not None and params.num_frames is not None:
        raise ParamError("seconds", "give seconds or num_frames, not both")
    if not params.prompt.strip():
        raise ParamError("prompt", "must contain more than white space")
    _check_prompt("prompt", params.prompt, limits, model)
    _check_prompt("negative_prompt", params.negative_prompt or "", limits, model)
    width, height = _check_size(
        params.size or settings.default_size, params.size is not None, limits, model
    )
    fps = params.fps or settings.default_fps
    _check_range("fps", fps, limits.min_fps, limits.max_fps, params.fps is not None, model)
    num_frames = _frame_count(params, fps, settings, limits, model)
    steps = params.num_inference_steps or settings.default_num_inference_steps
    sent_steps = params.num_inference_steps is not None
    _check_range("num_inference_steps", steps, 1, limits.max_inference_steps, sent_steps, model)
    guidance = (
        settings.default_guidance_scale if params.guidance_scale is None else params.guidance_scale
    )
    _check_range(
        "guidance_scale",
        guidance,
        limits.min_guidance_scale,
        limits.max_guidance_scale,
        params.guidance_scale is not None,
        model,
    )
    request = GenerationRequest(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt or "",
        width=width,
        height=height,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=params.seed if params.seed is not None else 0,
        fps=fps,
    )
    return _with_caching(request, params, limits, model), seconds_of(num_frames, fps)
