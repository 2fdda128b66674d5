"""An ``Engine`` that makes deterministic frames without a model (``--engine noop``).

It exists to measure and exercise everything around the model — queue latency, heartbeats,
fencing, cancellation, result storage — at a speed set by ``step_delay_s`` instead of by the
diffusion. ``qvgen bench service`` and the chaos tests run it; its videos are gradients whose
colour encodes the seed and the frame index, so a test can tell two results apart.
"""

from __future__ import annotations

import time

import numpy as np

from service.engine.rules import EngineRules, ModelGeometry, ModelLimits, check_request
from service.engine.types import (
    CancelCheck,
    CompileStatus,
    GeneratedVideo,
    GenerationCancelled,
    GenerationRequest,
    GenerationStats,
    StepCallback,
)

# What it runs: even sides (the MP4's yuv420p), up to 512 × 512 and 129 frames; any step count
# and guidance the API takes. Published like a model's rules, so the API refuses the rest.
NOOP_RULES = EngineRules(
    geometry=ModelGeometry(size_multiple=2, frame_step=1, text_tokens=0),
    limits=ModelLimits(
        max_width=512,
        max_height=512,
        max_frames=129,
        max_steps=500,
        min_guidance=0.0,
        max_guidance=50.0,
        max_prompt_chars=4000,
    ),
)


class NoopEngine:
    """Sleeps ``step_delay_s`` per step, then returns frame t filled with a seed-dependent
    gradient: pixel (t, y, x) = ((seed + 16 t) mod 256, 255 · y / H, 255 · x / W). Its stats
    count the transformer passes a plain run of a model would make (steps × 2 with guidance,
    steps without), none saved: whatever cache policy its rules let through changes nothing."""

    compile_status = CompileStatus.EAGER

    def __init__(
        self, model_id: str, step_delay_s: float = 0.0, rules: EngineRules = NOOP_RULES
    ) -> None:
        """``rules``: what it accepts (and publishes); tests pass a real model's to exercise
        the API's checks against them."""
        if step_delay_s < 0:
            raise ValueError(f"step_delay_s must be ≥ 0, got {step_delay_s}")
        if rules.geometry.size_multiple % 2:
            raise ValueError("the no-op engine writes MP4s: its size multiple must be even")
        self.model_id = model_id
        self.step_delay_s = step_delay_s
        self.rules = rules

    def check(self, request: GenerationRequest) -> None:
        check_request(request, self.rules.geometry, self.rules.limits, self.rules.caching)

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GeneratedVideo:
        self.check(request)
        start = time.perf_counter()
        total = request.num_inference_steps
        for step in range(total):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(step)
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            if on_step is not None:
                on_step(step + 1, total)
        frames = self._frames(request)
        elapsed = time.perf_counter() - start
        # A model's count of a plain run (it saves none: it has no transformer to skip).
        guided = 2 if request.guidance_scale > 1.0 else 1
        stats = GenerationStats(
            total_seconds=elapsed,
            seconds_per_step=elapsed / total,
            steps=total,
            peak_vram_bytes=0,
            transformer_passes=guided * total,
            transformer_passes_saved=0,
        )
        return GeneratedVideo(frames=frames, fps=request.fps, stats=stats)

    @staticmethod
    def _frames(request: GenerationRequest) -> np.ndarray:
        t = np.arange(request.num_frames, dtype=np.int64)[:, None, None]
        y = np.arange(request.height, dtype=np.int64)[None, :, None]
        x = np.arange(request.width, dtype=np.int64)[None, None, :]
        shape = (request.num_frames, request.height, request.width)
        red = np.broadcast_to((request.seed + 16 * t) % 256, shape)
        green = np.broadcast_to(255 * y // request.height, shape)
        blue = np.broadcast_to(255 * x // request.width, shape)
        return np.stack([red, green, blue], axis=-1).astype(np.uint8)
