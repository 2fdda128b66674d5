"""An ``Engine`` that makes deterministic frames without a model (``--engine noop``).

It exists to measure and exercise everything around the model — queue latency, heartbeats,
fencing, cancellation, result storage — at a speed set by ``step_delay_s`` instead of by the
diffusion. ``qvgen bench service`` and the chaos tests run it; its videos are gradients whose
colour encodes the seed and the frame index, so a test can tell two results apart.
"""

from __future__ import annotations

import time

import numpy as np

from service.engine.types import (
    CancelCheck,
    CompileStatus,
    GeneratedVideo,
    GenerationCancelled,
    GenerationRequest,
    GenerationStats,
    StepCallback,
)

MAX_SIDE = 512
MAX_FRAMES = 129


class NoopEngine:
    """Sleeps ``step_delay_s`` per step, then returns frame t filled with a seed-dependent
    gradient: pixel (t, y, x) = ((seed + 16 t) mod 256, 255 · y / H, 255 · x / W)."""

    # Its own caps (above) are all it checks; it publishes no model rules.
    rules = None
    compile_status = CompileStatus.EAGER

    def __init__(self, model_id: str, step_delay_s: float = 0.0) -> None:
        if step_delay_s < 0:
            raise ValueError(f"step_delay_s must be ≥ 0, got {step_delay_s}")
        self.model_id = model_id
        self.step_delay_s = step_delay_s

    def check(self, request: GenerationRequest) -> None:
        for name, value in (("width", request.width), ("height", request.height)):
            if not 2 <= value <= MAX_SIDE or value % 2:
                raise ValueError(f"{name} must be even and in [2, {MAX_SIDE}], got {value}")
        if not 1 <= request.num_frames <= MAX_FRAMES:
            raise ValueError(f"num_frames must lie in [1, {MAX_FRAMES}], got {request.num_frames}")
        if request.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be ≥ 1, got {request.num_inference_steps}")

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
        stats = GenerationStats(
            total_seconds=elapsed, seconds_per_step=elapsed / total, steps=total, peak_vram_bytes=0
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
