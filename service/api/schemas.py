"""Request and response bodies of the HTTP API (the OpenAI Videos shape, plus our extras)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.engine.caching.offer import THRESHOLDS
from service.engine.rules import CachingRules, EngineRules, ThresholdRange
from service.engine.types import CachePolicy
from service.queue.records import JobRecord
from service.settings import ServiceSettings

MAX_PROMPT_CHARS = 4000
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 16, 2048, 16
MAX_FRAMES = 1025
MAX_STEPS = 500
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 50.0
MIN_FPS, MAX_FPS = 1, 60
MAX_SEED = 2**63 - 1
# The widest threshold range any policy offers (``service.engine.caching.offer``: [0, 1]).
MIN_CACHE_THRESHOLD = min(rule.low for rule in THRESHOLDS.values())
MAX_CACHE_THRESHOLD = max(rule.high for rule in THRESHOLDS.values())
# ``queue_position`` counts at most this many jobs ahead (one bounded XRANGE per poll).
QUEUE_POSITION_CAP = 100
MAX_WEBHOOK_URL_CHARS = 2048


class VideoCreateParams(BaseModel):
    """``POST /v1/videos``: as JSON, or as the flat form fields the ``openai`` SDK sends.

    A JSON body is validated strictly (``strict_json``): a number field takes a JSON number,
    never ``true`` or ``"5"``. Form fields are strings by nature and are converted. ``seconds``
    takes a string in JSON too, as OpenAI's API spells it (``"4"``), but never a boolean.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    # Left out: the default model; "" is refused rather than read as the default.
    model: str | None = Field(default=None, min_length=1, max_length=128)
    size: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,5}x[0-9]{1,5}$",  # \d would take any script's digits
        description=f"WIDTHxHEIGHT; each side in [{MIN_SIDE}, {MAX_SIDE}], a multiple of {SIDE_MULTIPLE}",
    )
    seconds: float | None = Field(default=None, gt=0, le=120, allow_inf_nan=False)
    num_frames: int | None = Field(default=None, ge=1, le=MAX_FRAMES)
    fps: int | None = Field(default=None, ge=MIN_FPS, le=MAX_FPS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(
        default=None, ge=MIN_GUIDANCE, le=MAX_GUIDANCE, allow_inf_nan=False
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_WEBHOOK_URL_CHARS,
        description="Where video.completed / video.failed are posted (a host the server allows)",
    )
    cache: CachePolicy | None = Field(
        default=None,
        description=(
            "How the generation may reuse earlier transformer passes instead of running all of "
            "them; one of the model's cache_policies (GET /v1/models). Left out: the model's "
            "default_cache"
        ),
    )
    cache_threshold: float | None = Field(
        default=None,
        ge=MIN_CACHE_THRESHOLD,
        le=MAX_CACHE_THRESHOLD,
        allow_inf_nan=False,
        description=(
            "The cache policy's threshold (higher skips more passes), within the policy's range "
            "in the model's cache_policies; not with cache none. Left out: the model's default "
            "for that policy, stored in the job as the value it ran with"
        ),
    )
    guidance_stop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description=(
            "The fraction of the steps, from the first, that run the unconditional guidance "
            "pass (1: all of them); at least the model's min_guidance_stop. Left out: the "
            "model's default_guidance_stop"
        ),
    )

    @field_validator("seconds", mode="before")
    @classmethod
    def _seconds_as_openai_spells_it(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("seconds must be a number or a numeric string, not a boolean")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"seconds must be a number, got {value[:40]!r}") from None
        return value


class VideoRemixParams(BaseModel):
    """``POST /v1/videos/{id}/remix``: the new prompt; everything else is the source's."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL_CHARS)


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    """The OpenAI video object; the fields after ``remixed_from_video_id`` are our additions.
    (``cancelled`` in ``status`` is never answered any more: DELETE removes a job at once; it
    stays in the type for clients of earlier versions.)"""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    progress: int = Field(ge=0, le=100)
    created_at: int
    completed_at: int | None
    expires_at: int | None
    prompt: str
    seconds: str
    size: str
    error: VideoError | None
    remixed_from_video_id: str | None = None
    steps_done: int
    steps_total: int
    attempt: int
    queue_wait_seconds: float | None
    run_seconds: float | None
    queue_position: int | None = Field(
        default=None,
        ge=0,
        le=QUEUE_POSITION_CAP,
        description=(
            "While queued: unfinished jobs of the same model ahead of this one (running or "
            f"waiting; 0 = starts next), counted up to {QUEUE_POSITION_CAP}. Null otherwise "
            "and in listings."
        ),
    )
    cache: CachePolicy = Field(
        description="The cache policy the job runs with (the model's default when left out)"
    )
    cache_threshold: float | None = Field(
        description="Its threshold, as resolved at submission; null with cache none"
    )
    guidance_stop: float = Field(
        description="The fraction of the steps that run the unconditional guidance pass"
    )
    transformer_passes: int | None = Field(
        default=None,
        ge=0,
        description="Full transformer passes the generation ran; null until completed",
    )
    transformer_passes_saved: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Passes the cache and guidance_stop policies avoided against the plain run (one per "
            "step, two with guidance_scale above 1); null until completed"
        ),
    )

    @classmethod
    def from_record(cls, record: JobRecord, now_ms: int) -> VideoObject:
        request = record.request
        error = None
        if record.error_code:
            error = VideoError(code=record.error_code, message=record.error_message or "")
        queue_wait = None
        if record.started_at_ms is not None:
            queue_wait = (record.started_at_ms - record.created_at_ms) / 1000
        elif not record.status.final:
            queue_wait = (now_ms - record.created_at_ms) / 1000
        run = None
        if record.attempt_started_at_ms is not None and record.status.value != "queued":
            end = record.completed_at_ms if record.completed_at_ms is not None else now_ms
            run = max(0, end - record.attempt_started_at_ms) / 1000
        return cls(
            id=record.id,
            model=record.model,
            status=record.status.value,
            progress=record.progress,
            created_at=record.created_at_ms // 1000,
            completed_at=_seconds(record.completed_at_ms),
            expires_at=_seconds(record.expires_at_ms),
            prompt=request.prompt,
            seconds=record.seconds,
            size=f"{request.width}x{request.height}",
            error=error,
            remixed_from_video_id=record.remixed_from,
            steps_done=record.steps_done,
            steps_total=record.steps_total,
            attempt=record.attempt,
            queue_wait_seconds=queue_wait,
            run_seconds=run,
            cache=request.cache,
            cache_threshold=request.cache_threshold,
            guidance_stop=request.guidance_stop,
            transformer_passes=record.transformer_passes,
            transformer_passes_saved=record.transformer_passes_saved,
        )


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class GenerationLimits(BaseModel):
    """What ``POST /v1/videos`` accepts for one model, and what it fills in for a left-out field.

    width ∈ [min_side, max_width], height ∈ [min_side, max_height], each a multiple of
    ``size_multiple``; num_frames = 1 + frame_step · k ≤ max_frames; guidance_scale ∈
    [min_guidance_scale, max_guidance_scale]; cache one of ``cache_policies`` (each with its
    threshold range; none, which takes no threshold, with null), magcache only at
    num_inference_steps in ``magcache_steps``; guidance_stop ∈ [min_guidance_stop, 1].
    ``from_worker``: the API's own bounds narrowed by the rules the model's workers published;
    without them (no worker has started yet), only the API's bounds (frame_step 1, every cache
    policy at any step count, magcache_steps null, guidance_stop down to 0).
    ``POST /v1/videos`` refuses with 400 whatever lies outside (``service.api.validation``).
    """

    from_worker: bool
    min_side: int
    max_width: int
    max_height: int
    size_multiple: int
    max_frames: int
    frame_step: int
    max_inference_steps: int
    min_guidance_scale: float
    max_guidance_scale: float
    min_fps: int
    max_fps: int
    max_seed: int
    max_prompt_chars: int
    default_size: str
    default_num_frames: int
    default_num_inference_steps: int
    default_guidance_scale: float
    default_fps: int
    cache_policies: dict[CachePolicy, ThresholdRange | None]
    magcache_steps: list[int] | None
    min_guidance_stop: float
    default_cache: CachePolicy
    default_cache_threshold: float | None
    default_guidance_stop: float

    @classmethod
    def for_model(cls, settings: ServiceSettings, rules: EngineRules | None) -> GenerationLimits:
        """The API's bounds, intersected with ``rules`` when the model's worker published them."""
        limits = cls._api_bounds(settings)
        return limits if rules is None else limits._narrowed(rules)

    @classmethod
    def _api_bounds(cls, settings: ServiceSettings) -> GenerationLimits:
        return cls(
            from_worker=False,
            min_side=MIN_SIDE,
            max_width=MAX_SIDE,
            max_height=MAX_SIDE,
            size_multiple=SIDE_MULTIPLE,
            max_frames=MAX_FRAMES,
            frame_step=1,
            max_inference_steps=MAX_STEPS,
            min_guidance_scale=MIN_GUIDANCE,
            max_guidance_scale=MAX_GUIDANCE,
            min_fps=MIN_FPS,
            max_fps=MAX_FPS,
            max_seed=MAX_SEED,
            max_prompt_chars=MAX_PROMPT_CHARS,
            default_size=settings.default_size,
            default_num_frames=settings.default_num_frames,
            default_num_inference_steps=settings.default_num_inference_steps,
            default_guidance_scale=settings.default_guidance_scale,
            default_fps=settings.default_fps,
            cache_policies={CachePolicy.NONE: None, **THRESHOLDS},
            magcache_steps=None,
            min_guidance_stop=0.0,
            # The cache defaults are the model's (its workers' settings): none until published.
            default_cache=CachePolicy.NONE,
            default_cache_threshold=None,
            default_guidance_stop=1.0,
        )

    def _narrowed(self, rules: EngineRules) -> GenerationLimits:
        """Both sets of rules at once: sides a multiple of lcm(API, model) within both ranges,
        frames 1 + k · model step within both maxima, every range the intersection."""
        multiple = math.lcm(self.size_multiple, rules.geometry.size_multiple)
        step = rules.geometry.frame_step
        caps = rules.limits
        return self.model_copy(
            update={
                "from_worker": True,
                "size_multiple": multiple,
                "min_side": -(-self.min_side // multiple) * multiple,
                "max_width": min(self.max_width, caps.max_width) // multiple * multiple,
                "max_height": min(self.max_height, caps.max_height) // multiple * multiple,
                "frame_step": step,
                "max_frames": (min(self.max_frames, caps.max_frames) - 1) // step * step + 1,
                "max_inference_steps": min(self.max_inference_steps, caps.max_steps),
                "min_guidance_scale": max(self.min_guidance_scale, caps.min_guidance),
                "max_guidance_scale": min(self.max_guidance_scale, caps.max_guidance),
                "min_fps": max(self.min_fps, caps.min_fps),
                "max_fps": min(self.max_fps, caps.max_fps),
                "max_prompt_chars": min(self.max_prompt_chars, caps.max_prompt_chars),
                **_caching_fields(rules.caching),
            }
        )

    def caching_rules(self) -> CachingRules:
        """What ``service.engine.rules.check_caching`` holds a request to under these limits:
        the published fields read back (``magcache_steps`` null: every step count)."""
        steps = self.magcache_steps
        if steps is None:
            steps = list(range(1, self.max_inference_steps + 1))
        return CachingRules(
            thresholds={
                policy: rule for policy, rule in self.cache_policies.items() if rule is not None
            },
            magcache_steps=tuple(steps),
            guidance_stop=self.min_guidance_stop < 1,
            default_cache=self.default_cache,
            default_cache_threshold=self.default_cache_threshold,
            default_guidance_stop=self.default_guidance_stop,
        )


def _caching_fields(caching: CachingRules) -> dict[str, object]:
    """``GenerationLimits``' cache fields: exactly what the model offers."""
    return {
        "cache_policies": {CachePolicy.NONE: None, **caching.thresholds},
        "magcache_steps": list(caching.magcache_steps),
        "min_guidance_stop": 0.0 if caching.guidance_stop else 1.0,
        "default_cache": caching.default_cache,
        "default_cache_threshold": caching.default_cache_threshold,
        "default_guidance_stop": caching.default_guidance_stop,
    }


class ModelObject(BaseModel):
    """The OpenAI model object; ``limits`` is our addition."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qvgen"
    limits: GenerationLimits | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    redis: bool
    workers: dict[str, int]
