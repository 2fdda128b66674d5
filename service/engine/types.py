"""What the engine takes and gives back: the seam between the engine and its callers.

The worker (``service`` queue side) and the CLI build a ``GenerationRequest``, call
``Engine.generate(request, on_step, should_cancel)`` and receive a ``GeneratedVideo``. Nothing
here knows of HTTP or Redis.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # rules imports this module's request types
    from service.engine.rules import EngineRules

# on_step(steps_done, steps_total), called after every denoising step.
StepCallback = Callable[[int, int], None]
# should_cancel() → True stops the generation before the next step.
CancelCheck = Callable[[], bool]


class CompilePolicy(enum.StrEnum):
    """Whether an engine compiles its transformer (``service.engine.compilation``)."""

    AUTO = "auto"  # on CUDA; off on the CPU, where inductor's code is slow to build
    ON = "on"
    OFF = "off"


class AttentionKernel(enum.StrEnum):
    """What runs the transformer's self-attention."""

    SDPA = "sdpa"  # torch's scaled_dot_product_attention, as diffusers calls it
    INT8 = "int8"  # service.kernels.attention_int8 (Wan only; where it is faster: measure)


class CachePolicy(enum.StrEnum):
    """How a generation may reuse earlier transformer passes instead of running all of them
    (``service.engine.caching``)."""

    NONE = "none"  # every pass runs: the plain generation
    FIRST_BLOCK = "first-block"  # diffusers' FirstBlockCache
    FIRST_BLOCK_POOLED = "first-block-pooled"  # ours: its criterion on token-pooled residuals
    MAGCACHE = "magcache"  # diffusers' MagCache, with ratios calibrated for the model


class CompileStatus(enum.StrEnum):
    """How an engine's transformer runs: eager by choice, compiled, or eager after a failure."""

    EAGER = "eager"
    COMPILED = "compiled"
    FALLBACK = "fallback"


class GenerationCancelled(Exception):
    """Raised by ``Engine.generate`` when ``should_cancel`` answered True."""

    def __init__(self, steps_done: int) -> None:
        super().__init__(f"generation cancelled after {steps_done} steps")
        self.steps_done = steps_done


class InvalidRequest(ValueError):
    """Raised by ``Engine.check``: ``field`` names the ``GenerationRequest`` field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class GenerationRequest:
    """One text-to-video generation. ``Engine.check`` validates it against the model's limits."""

    prompt: str
    negative_prompt: str = ""
    width: int = 64
    height: int = 64
    num_frames: int = 17
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    fps: int = 8
    # Fewer transformer passes (``service.engine.caching``): the cache policy, its threshold
    # (None: the model's default for that policy) and the fraction of the steps, from the
    # first, that run the unconditional guidance pass (1.0: all of them).
    cache: CachePolicy = CachePolicy.NONE
    cache_threshold: float | None = None
    guidance_stop: float = 1.0

    def __post_init__(self) -> None:
        # Job records store the policy as its string; read back, it becomes the enum again.
        if not isinstance(self.cache, CachePolicy):
            try:
                object.__setattr__(self, "cache", CachePolicy(self.cache))
            except ValueError:
                allowed = ", ".join(policy.value for policy in CachePolicy)
                raise InvalidRequest(
                    "cache", f"{self.cache!r} is not a cache policy; use one of {allowed}"
                ) from None


@dataclass(frozen=True)
class GenerationStats:
    """Measured cost of one generation."""

    total_seconds: float
    seconds_per_step: float
    steps: int
    peak_vram_bytes: int  # 0 on CPU
    # Full transformer passes run (one per sample of a call that ran every block), and those
    # the cache and guidance policies avoided against the plain run (steps × guidance passes).
    transformer_passes: int = 0
    transformer_passes_saved: int = 0


@dataclass(frozen=True)
class GeneratedVideo:
    """Frames as uint8 [T, H, W, 3] RGB, with the rate they should play at."""

    frames: np.ndarray
    fps: int
    stats: GenerationStats
    extras: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    """A loaded model that turns requests into videos."""

    model_id: str
    # How the transformer runs (Prometheus reads it; the no-op engine has none to compile).
    compile_status: CompileStatus

    @property
    def rules(self) -> EngineRules | None:
        """What ``check`` holds a request to, published for clients; None when the engine has
        no such description (the no-op engine)."""

    def check(self, request: GenerationRequest) -> None:
        """Raise ``ValueError`` (``InvalidRequest``) quoting the bad value and the allowed range."""

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GeneratedVideo:
        """Run the whole generation on this engine's device."""
        ...
