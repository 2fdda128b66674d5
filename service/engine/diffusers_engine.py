"""``DiffusersEngine``: one loaded Wan or CogVideoX pipeline that turns requests into videos.

A generation runs in three timed phases: prompt encoding (then, optionally, the text encoder
leaves the GPU), the denoising loop inside the diffusers pipeline (``on_step`` and the
cancellation check run in its ``callback_on_step_end``), and VAE decoding. Cancellation raises
``GenerationCancelled`` out of the pipeline call, so no partially denoised video is ever decoded
or returned.

A request may save transformer passes (``service.engine.caching``): a cache policy on diffusers'
hooks, enabled for that generation only, and an early stop of the unconditional guidance pass
(in the step callback). ``GenerationStats`` reports the full passes run and those saved.

The transformer is compiled per ``CompileOptions`` (``service.engine.compilation``: on CUDA by
default). Compilation happens at the first call, so ``warm_up`` runs one short generation at
the size the caller expects to serve; if compiling fails there — or later, at the first call of
a new shape, before any step of that job completed — the engine logs one line, returns the
transformer to eager execution for good (``compile_status`` FALLBACK) and runs the generation
eagerly instead of failing it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch._dynamo.exc import TorchDynamoException

from qvgen.checkpoint.cache_calibration import CacheCalibration, read_calibration
from qvgen.family import ModelFamily, detect_family
from qvgen.timestep_groups import restart_timestep_groups
from service.engine.caching.guidance import GuidanceStop
from service.engine.caching.offer import CacheDefaults, offered_caching
from service.engine.caching.session import CachePlan, PassCount, cache_session
from service.engine.compilation import (
    CompiledModules,
    CompileOptions,
    CompileScope,
    compile_transformer,
    repeated_blocks,
)
from service.engine.environment import RuntimeTarget, resolve_target
from service.engine.loading import (
    MemoryOptions,
    VideoPipeline,
    load_pipeline_on,
    pipeline_geometry,
)
from service.engine.rules import (
    CachingRules,
    EngineRules,
    ModelGeometry,
    ModelLimits,
    check_request,
    default_limits,
)
from service.engine.types import (
    AttentionKernel,
    CachePolicy,
    CancelCheck,
    CompileStatus,
    GeneratedVideo,
    GenerationCancelled,
    GenerationRequest,
    GenerationStats,
    StepCallback,
)

logger = logging.getLogger(__name__)


@dataclass
class _StepClock:
    """Per-generation bookkeeping that the step callback updates."""

    total_steps: int
    on_step: StepCallback | None
    should_cancel: CancelCheck | None
    guidance: GuidanceStop | None = None
    started: float = field(default_factory=time.perf_counter)
    step_ends: list[float] = field(default_factory=list)

    def __call__(
        self, pipeline: VideoPipeline, index: int, _timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.step_ends.append(time.perf_counter())
        if self.guidance is not None:
            self.guidance.after_step(pipeline, index)
        done = index + 1
        if self.on_step is not None:
            self.on_step(done, self.total_steps)
        # Also after the last step: a cancelled job should not spend the decoder's time.
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCancelled(done)
        return kwargs


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    """[1, T, H, W, 3] floats in [0, 1] → contiguous uint8 [T, H, W, 3]."""
    video = np.clip(np.rint(frames[0] * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(video)


class DiffusersEngine:
    """An ``Engine`` (``service.engine.types``) over a loaded diffusers pipeline.

    One generation at a time: the pipeline's scheduler and the transformer's clip-group state
    belong to the running job, so callers (the worker) serialise ``generate`` calls.
    Stats: ``seconds_per_step`` is the denoising loop's wall time (from the pipeline call to the
    last step's end, latents set-up included) over the step count; ``extras`` holds
    ``encode_seconds`` and ``decode_seconds`` (VAE decoding and conversion to uint8).
    """

    def __init__(
        self,
        pipeline: VideoPipeline,
        family: ModelFamily,
        target: RuntimeTarget,
        model_id: str,
        options: MemoryOptions | None = None,
        limits: ModelLimits | None = None,
        compile_options: CompileOptions | None = None,
        attention: AttentionKernel = AttentionKernel.SDPA,
        calibration: CacheCalibration | None = None,
        cache_defaults: CacheDefaults | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.family = family
        self.target = target
        self.model_id = model_id
        self.options = options or MemoryOptions()
        self.limits = limits or default_limits(family)
        self.geometry: ModelGeometry = pipeline_geometry(pipeline, family)
        # Progress belongs to the caller (on_step); keep diffusers' own bars out of logs.
        pipeline.set_progress_bar_config(disable=True)
        if self._offloads_text_encoder:
            # Between jobs the text encoder waits in CPU memory; _encode brings it over.
            pipeline.text_encoder.to("cpu")
        self.attention = attention
        if attention is AttentionKernel.INT8:
            self._use_int8_attention()
        self.compile_options = compile_options or CompileOptions()
        self._compiled: CompiledModules | None = None
        self.compile_status = CompileStatus.EAGER
        whole_graph = False
        if self.compile_options.wanted(target.is_cuda):
            self._compiled = compile_transformer(pipeline.transformer, self.compile_options)
            self.compile_status = CompileStatus.COMPILED
            whole_graph = self.compile_options.scope is CompileScope.WHOLE
        self.calibration = calibration or CacheCalibration()
        self._blocks = repeated_blocks(pipeline.transformer)
        self.caching: CachingRules = offered_caching(
            family,
            self.calibration,
            whole_graph,
            cache_defaults or CacheDefaults(),
            len(self._blocks),
        )

    def _use_int8_attention(self) -> None:
        if self.family is not ModelFamily.WAN:
            logger.warning("8-bit attention is written for Wan; %s keeps SDPA", self.family.value)
            self.attention = AttentionKernel.SDPA
            return
        from service.kernels.wan_attention import use_int8_self_attention

        blocks = use_int8_self_attention(self.pipeline.transformer)
        logger.info("%s: self-attention of %d blocks on the 8-bit kernel", self.model_id, blocks)

    @property
    def rules(self) -> EngineRules:
        return EngineRules(geometry=self.geometry, limits=self.limits, caching=self.caching)

    @property
    def _offloads_text_encoder(self) -> bool:
        return self.options.offload_text_encoder and self.target.is_cuda

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str = "cpu",
        options: MemoryOptions | None = None,
        limits: ModelLimits | None = None,
        model_id: str | None = None,
        compile_options: CompileOptions | None = None,
        attention: AttentionKernel = AttentionKernel.SDPA,
        cache_defaults: CacheDefaults | None = None,
    ) -> DiffusersEngine:
        """Check the environment, load ``model_dir`` (and its cache calibration, if any) and
        wrap it; ``model_id`` defaults to the directory name."""
        target = resolve_target(device)
        family = detect_family(model_dir)
        calibration = read_calibration(model_dir)
        pipeline = load_pipeline_on(model_dir, target, options)
        model_id = model_id or Path(model_dir).name
        return cls(
            pipeline,
            family,
            target,
            model_id,
            options,
            limits,
            compile_options,
            attention,
            calibration,
            cache_defaults,
        )

    def warm_up(self, request: GenerationRequest) -> float:
        """Run ``request`` once and discard the video, so that compilation (and the kernels'
        autotuning) happens now rather than in the first job; returns the seconds it took.

        A request this model refuses raises ``InvalidRequest``. Use the size that will be
        served: a new shape compiles again at its first call.
        """
        self.check(request)
        started = time.perf_counter()
        self.generate(request)
        seconds = time.perf_counter() - started
        logger.info(
            "%s: warmed up in %.1f s (%d×%d×%d, %d steps), transformer %s",
            self.model_id,
            seconds,
            request.num_frames,
            request.height,
            request.width,
            request.num_inference_steps,
            self.compile_status.value,
        )
        return seconds

    def _fall_back_to_eager(self, error: Exception) -> None:
        assert self._compiled is not None
        self._compiled.undo()
        self._compiled = None
        self.compile_status = CompileStatus.FALLBACK
        torch._dynamo.reset()
        logger.error(
            "%s: torch.compile failed (%s: %s); the transformer runs eagerly from now on",
            self.model_id,
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )

    def check(self, request: GenerationRequest) -> None:
        """Raise ``InvalidRequest`` (a ``ValueError``) naming the field and its allowed range."""
        check_request(request, self.geometry, self.limits, self.caching)

    def _encode(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt (and, with guidance, negative prompt) embeddings on the target device."""
        encoder = self.pipeline.text_encoder
        offload = self._offloads_text_encoder
        if offload:
            encoder.to(self.target.device)
        try:
            with torch.no_grad():
                positive, negative = self.pipeline.encode_prompt(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt,
                    do_classifier_free_guidance=request.guidance_scale > 1.0,
                    num_videos_per_prompt=1,
                    max_sequence_length=self.geometry.text_tokens,
                    device=self.target.device,
                    dtype=self.target.dtype,
                )
        finally:
            if offload:
                encoder.to("cpu")
                torch.cuda.empty_cache()
        return positive, negative

    def cache_plan(self, request: GenerationRequest, calibrate: bool = False) -> CachePlan:
        """The request's policy with its threshold resolved (the model's default when left
        out); ``calibrate`` measures MagCache's ratios instead (``calibrate_magcache``)."""
        if calibrate:
            return CachePlan(
                CachePolicy.MAGCACHE, steps=request.num_inference_steps, calibrate=True
            )
        policy = request.cache
        if policy is CachePolicy.NONE:
            return CachePlan(policy)
        threshold = request.cache_threshold
        if threshold is None:
            default = self.caching.default_cache_threshold
            use_default = policy is self.caching.default_cache and default is not None
            threshold = default if use_default else self.caching.thresholds[policy].default
        return CachePlan(
            policy,
            threshold,
            request.num_inference_steps,
            self.calibration.magcache.get(request.num_inference_steps),
        )

    def _denoise_and_decode(
        self,
        request: GenerationRequest,
        embeddings: tuple[torch.Tensor, torch.Tensor | None],
        clock: _StepClock,
        plan: CachePlan,
    ) -> tuple[np.ndarray, PassCount]:
        generator = torch.Generator(device=self.target.device).manual_seed(request.seed)
        transformer = self.pipeline.transformer
        # A checkpoint served in the release's call order counts this generation's calls anew.
        restart_timestep_groups(transformer)
        guidance = GuidanceStop(
            transformer, request.guidance_scale, request.guidance_stop, request.num_inference_steps
        )
        clock.guidance = guidance
        with cache_session(transformer, self._blocks, plan) as passes:
            output = self.pipeline(
                prompt_embeds=embeddings[0],
                negative_prompt_embeds=embeddings[1],
                height=request.height,
                width=request.width,
                num_frames=request.num_frames,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=guidance.pipeline_scale,
                generator=generator,
                output_type="np",
                callback_on_step_end=clock,
            )
        return _to_uint8(np.asarray(output.frames)), passes

    def _run(
        self,
        request: GenerationRequest,
        embeddings: tuple[torch.Tensor, torch.Tensor | None],
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
        calibrate: bool,
    ) -> tuple[np.ndarray, PassCount, _StepClock]:
        plan = self.cache_plan(request, calibrate)
        clock = _StepClock(request.num_inference_steps, on_step, should_cancel)
        try:
            frames, passes = self._denoise_and_decode(request, embeddings, clock, plan)
        except TorchDynamoException as error:
            # Compiling (dynamo's trace or the backend) failed before the first step finished:
            # nothing was reported yet, so the job can start over on the eager transformer.
            if self._compiled is None or clock.step_ends:
                raise
            self._fall_back_to_eager(error)
            clock = _StepClock(request.num_inference_steps, on_step, should_cancel)
            frames, passes = self._denoise_and_decode(request, embeddings, clock, plan)
        return frames, passes, clock

    def measure_magnitude_ratios(self, request: GenerationRequest) -> dict[str, list[float]]:
        """Generate ``request`` with diffusers' MagCache in calibration mode (nothing skipped)
        and return each guidance branch's magnitude ratios, one per step
        (``qvgen/checkpoint/cache_calibration.py``)."""
        _, passes = self._generate(request, None, None, calibrate=True)
        return passes.ratios

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GeneratedVideo:
        """Run one generation; ``on_step(i, n)`` after step i of n; ``should_cancel()`` → True
        raises ``GenerationCancelled`` before the next step starts.

        The initial noise comes from a ``torch.Generator`` on the target device seeded with
        ``request.seed``: a fixed seed on a fixed device and dtype gives the same frames.
        """
        video, _ = self._generate(request, on_step, should_cancel, calibrate=False)
        return video

    def _generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
        calibrate: bool,
    ) -> tuple[GeneratedVideo, PassCount]:
        self.check(request)
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(0)
        if self.target.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.target.device)
        started = time.perf_counter()
        embeddings = self._encode(request)
        frames, passes, clock = self._run(request, embeddings, on_step, should_cancel, calibrate)
        finished = time.perf_counter()
        expected = (request.num_frames, request.height, request.width, 3)
        if frames.shape != expected:
            raise RuntimeError(f"pipeline returned frames {frames.shape}, expected {expected}")
        guided = 2 if request.guidance_scale > 1.0 else 1
        stats = GenerationStats(
            total_seconds=finished - started,
            seconds_per_step=(clock.step_ends[-1] - clock.started) / len(clock.step_ends),
            steps=len(clock.step_ends),
            peak_vram_bytes=(
                torch.cuda.max_memory_allocated(self.target.device) if self.target.is_cuda else 0
            ),
            transformer_passes=passes.full,
            transformer_passes_saved=guided * len(clock.step_ends) - passes.full,
        )
        logger.info(
            "%s: %d×%d×%d, %d steps in %.2f s (%.3f s/step), %d transformer passes (%d saved, "
            "cache %s, guidance_stop %g), peak VRAM %.2f GiB",
            self.model_id,
            request.num_frames,
            request.height,
            request.width,
            stats.steps,
            stats.total_seconds,
            stats.seconds_per_step,
            stats.transformer_passes,
            stats.transformer_passes_saved,
            request.cache.value,
            request.guidance_stop,
            stats.peak_vram_bytes / 2**30,
        )
        extras = {
            "encode_seconds": clock.started - started,
            "decode_seconds": finished - clock.step_ends[-1],
        }
        video = GeneratedVideo(frames=frames, fps=request.fps, stats=stats, extras=extras)
        return video, passes
