"""``qvgen bench e2e``: a Wan 2.1 denoising step and a whole generation, W4A4 against its peers.

For each architecture (``random_models``: the real Wan 2.1 1.3B / 14B configs, random weights)
at one video size (default 81 × 480 × 832 → 32 760 tokens):

* **step latency** — one denoising step with classifier-free guidance = two transformer calls
  (prompt and negative prompt, batch 1 each, as ``WanPipeline`` makes them) plus the guidance
  combination ε_u + g(ε_c − ε_u); the scheduler's update (one axpy over the latents) is left out.
  Median over ``timed_steps`` after ``warmup_steps`` (which also run Triton's autotuning and
  the compilation), timed with CUDA events, for each peer (``benchmarks.peers``): bf16 =
  diffusers' ``WanTransformer3DModel`` with its SDPA attention, eager and compiled; FP8 rowwise
  linears, compiled; W4A4 = the same model with every block linear a ``LowBitLinear`` (Triton on
  sm_80+), attention still bf16 SDPA, eager and compiled.
* **attention share** — the bf16 self-attention alone (SDPA on [1, heads, tokens, head_dim],
  × layers × 2 calls): the part of a step that W4A4 linears cannot speed up. The rest of a step
  (linears, norms, modulation, cross-attention) is "other".
* **transformer weight bytes** — every parameter and buffer the transformer holds.
* **peak VRAM of a generation** — a whole ``WanPipeline`` call (prompt encoding, ``generation_
  steps`` denoising steps with guidance, VAE decoding with tiling, frames to numpy) with the real
  Wan VAE config; ``torch.cuda.max_memory_allocated`` from just before the call. The text encoder
  is a small stand-in UMT5 that stays on the CPU: text-encoder memory is excluded, which is what
  offloading it means for the GPU (UMT5-XXL has 5.7B parameters and never shares the GPU with the
  denoising loop when offloaded).

Prints a table and the speed goals, appends a section to BENCHMARKS.md with card, date and
commit, and can write the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.e2e_report import (
    GIB,
    append_section,
    generations_table,
    goal_checks,
    peers_table,
    results_table,
    section_text,
)
from benchmarks.peers import CompileSettings, ModelVariant, Peer, PeerModel
from benchmarks.plain_json import dataclasses_to_json
from benchmarks.random_models import (
    UMT5_STAND_IN,
    WAN_2_1_VAE,
    WAN_ARCHITECTURES,
    VaeArchitecture,
    WanArchitecture,
    count_quantized,
    random_bf16_transformer,
    random_packed_transformer,
    random_wan_vae,
    resident_bytes,
    stand_in_text_encoder,
)
from benchmarks.timing import time_ms
from qvgen.cli import command_group
from qvgen.family import ModelFamily, PipelineGeometry
from qvgen.tiny_pipelines import TextEncoderSize
from service.engine.compilation import CompileScope
from service.engine.environment import RuntimeTarget, resolve_target

logger = logging.getLogger(__name__)

# A mid-trajectory timestep: its clip group is as good as any for timing.
_TIMED_TIMESTEP = 500.0
_PROMPT = "a red car drives on a street at night"
_NEGATIVE_PROMPT = "blurry low quality static"
# Allocated memory at a generation's start beyond its models that is worth a warning.
_STRAY_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VideoSize:
    """Frames × height × width of the generated video."""

    frames: int = 81
    height: int = 480
    width: int = 832

    def geometry(self, arch: WanArchitecture, vae: VaeArchitecture) -> PipelineGeometry:
        """The pipeline's geometry (``qvgen.family``), with this size checked against it;
        ``ValueError`` naming the flag and the allowed multiples otherwise."""
        patch_t, patch_h, patch_w = arch.patch_size
        geometry = PipelineGeometry(
            ModelFamily.WAN,
            vae.spatial_factor,
            vae.temporal_factor,
            math.lcm(patch_h, patch_w),
            patch_t,
        )
        geometry.check_bucket(self.frames, self.height, self.width)
        return geometry

    def latent_shape(self, arch: WanArchitecture, vae: VaeArchitecture) -> tuple[int, ...]:
        """[channels, frames, height, width] of the latents."""
        geometry = self.geometry(arch, vae)
        s = geometry.spatial_factor
        frames = geometry.latent_frames(self.frames)
        return (arch.latent_channels, frames, self.height // s, self.width // s)

    def tokens(self, arch: WanArchitecture, vae: VaeArchitecture) -> int:
        return self.geometry(arch, vae).tokens(self.frames, self.height, self.width)


@dataclass(frozen=True)
class E2ESettings:
    """What ``run_benchmark`` measures. ``peers`` lists the configurations timed (bf16 and
    W4A4 eager always: the baseline and the memory comparison); ``generation`` lists the (model
    name, peer) pairs whose whole generation (peak VRAM, wall clock) is measured."""

    architectures: tuple[WanArchitecture, ...] = WAN_ARCHITECTURES
    video: VideoSize = field(default_factory=VideoSize)
    vae: VaeArchitecture = WAN_2_1_VAE
    text_encoder: TextEncoderSize = UMT5_STAND_IN
    peers: tuple[Peer, ...] = tuple(Peer)
    compile: CompileSettings = field(default_factory=CompileSettings)
    generation: tuple[tuple[str, Peer], ...] = (
        ("wan2.1-14b", Peer.W4A4),
        ("wan2.1-14b", Peer.BF16),
    )
    warmup_steps: int = 1
    timed_steps: int = 3
    generation_steps: int = 2
    guidance_scale: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "timed_steps", "generation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        missing = [p.value for p in (Peer.BF16, Peer.W4A4) if p not in self.peers]
        if missing:
            raise ValueError(f"peers must include {missing}: the baseline and the memory row")
        unmeasured = sorted(p.value for _, p in self.generation if p not in self.peers)
        if unmeasured:
            raise ValueError(f"generation names peers that are not measured: {unmeasured}")
        names = {a.name for a in self.architectures}
        unknown = sorted(n for n, _ in self.generation if n not in names)
        if unknown:
            raise ValueError(f"generation names unknown models {unknown}; known: {sorted(names)}")


@dataclass(frozen=True)
class GenerationResult:
    """One whole generation; ``error`` set when it failed.

    ``start_bytes``: GPU memory allocated when the call began (should be the transformer and
    VAE, ``model_bytes``); ``peak_bytes``: the maximum during the call. Both None off CUDA.
    """

    steps: int
    seconds: float | None
    peak_bytes: int | None
    frames_shape: tuple[int, ...] | None
    model_bytes: int
    start_bytes: int | None
    error: str | None = None


@dataclass(frozen=True)
class PeerResult:
    """One peer's measurement; ``error`` set (and no times) when it failed. ``fp8_impl`` names
    the FP8 implementation of the FP8 peer."""

    peer: Peer
    step_ms: tuple[float, ...]
    weight_bytes: int
    quantized_layers: int
    generation: GenerationResult | None = None
    error: str | None = None
    fp8_impl: str | None = None

    @property
    def median_step_ms(self) -> float:
        if not self.step_ms:
            raise ValueError(f"{self.peer.value} has no step times: {self.error}")
        return statistics.median(self.step_ms)


@dataclass(frozen=True)
class ModelResult:
    model: str
    tokens: int
    attention_ms_per_step: float
    peers: tuple[PeerResult, ...]

    def result(self, peer: Peer) -> PeerResult | None:
        return next((r for r in self.peers if r.peer is peer), None)

    def _required(self, peer: Peer) -> PeerResult:
        found = self.result(peer)
        if found is None:
            raise ValueError(f"{self.model}: {peer.value} was not measured")
        return found

    @property
    def bf16(self) -> PeerResult:
        return self._required(Peer.BF16)

    @property
    def w4a4(self) -> PeerResult:
        return self._required(Peer.W4A4)

    def speedup_of(self, peer: Peer) -> float | None:
        """bf16 eager step time ÷ ``peer``'s (None when it was not measured or failed)."""
        found = self.result(peer)
        if found is None or not found.step_ms:
            return None
        return self.bf16.median_step_ms / found.median_step_ms

    def fastest(self, ours: bool) -> PeerResult | None:
        """The fastest measured peer of ours (or of the others)."""
        timed = [r for r in self.peers if r.peer.ours is ours and r.step_ms]
        return min(timed, key=lambda r: r.median_step_ms, default=None)

    @property
    def speedup(self) -> float:
        """bf16 step time ÷ W4A4 step time (above 1: W4A4 is faster)."""
        return self.bf16.median_step_ms / self.w4a4.median_step_ms

    @property
    def weight_ratio(self) -> float:
        return self.bf16.weight_bytes / self.w4a4.weight_bytes

    @property
    def attention_share(self) -> float:
        return self.attention_ms_per_step / self.bf16.median_step_ms

    def other_speedup(self, peer: PeerResult | None = None) -> float | None:
        """Speed-up of everything but self-attention: (bf16 − attn) ÷ (peer − attn), peer
        W4A4 eager unless given (attn: bf16 SDPA's time, so for a peer with another attention
        kernel its gain shows here too)."""
        rest = (peer or self.w4a4).median_step_ms - self.attention_ms_per_step
        if rest <= 0:
            return None
        return (self.bf16.median_step_ms - self.attention_ms_per_step) / rest

    def other_speedup_needed(self, goal: float) -> float | None:
        """The speed-up of the non-attention part that would give a step ``goal``× faster;
        None when attention alone takes longer than the goal allows."""
        budget = self.bf16.median_step_ms / goal - self.attention_ms_per_step
        if budget <= 0:
            return None
        return (self.bf16.median_step_ms - self.attention_ms_per_step) / budget


def _step_inputs(
    settings: E2ESettings, arch: WanArchitecture, target: RuntimeTarget
) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=target.device).manual_seed(settings.seed)
    latent = settings.video.latent_shape(arch, settings.vae)
    text = (1, settings.text_encoder.max_tokens, arch.text_dim)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=target.device, dtype=target.dtype)

    return {
        "latents": draw((1, *latent)),
        "timestep": torch.full((1,), _TIMED_TIMESTEP, device=target.device),
        "prompt": draw(text),
        "negative": draw(text),
    }


def denoising_step(
    transformer: nn.Module, inputs: dict[str, torch.Tensor], guidance: float
) -> torch.Tensor:
    """ε̂ = ε_u + g (ε_c − ε_u): the two transformer calls of a guided step."""
    calls = []
    for text in (inputs["prompt"], inputs["negative"]):
        out = transformer(
            hidden_states=inputs["latents"],
            timestep=inputs["timestep"],
            encoder_hidden_states=text,
            return_dict=False,
        )
        calls.append(out[0])
    cond, uncond = calls
    return uncond + guidance * (cond - uncond)


def attention_ms_per_step(
    arch: WanArchitecture, tokens: int, target: RuntimeTarget, settings: E2ESettings
) -> float:
    """bf16 SDPA self-attention time of one guided step: layers × 2 calls × one attention."""
    shape = (1, arch.num_heads, tokens, arch.head_dim)
    q, k, v = (torch.randn(shape, device=target.device, dtype=target.dtype) for _ in range(3))
    with torch.inference_mode():
        times = time_ms(
            lambda: F.scaled_dot_product_attention(q, k, v),
            target.device,
            settings.warmup_steps,
            max(settings.timed_steps, 5),
        )
    return statistics.median(times) * arch.num_layers * 2


def _build(
    variant: ModelVariant, arch: WanArchitecture, target: RuntimeTarget, seed: int
) -> nn.Module:
    if variant is ModelVariant.BF16:
        return random_bf16_transformer(arch, target.device, target.dtype, seed)
    return random_packed_transformer(
        arch, target.device, target.dtype, seed, fuse_projections=variant.fused_projections
    )


def _reset_peak(target: RuntimeTarget) -> None:
    """Free what earlier work left and restart the peak counter from what is still allocated.

    A diffusers pipeline holds its components in reference cycles, so a model measured earlier
    outlives its last reference until a collection; without one it would sit in the next
    peak (seen on an H200: the bf16 14B transformer counted in the W4A4 generation's peak).
    """
    gc.collect()
    if target.is_cuda:
        torch.cuda.synchronize(target.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(target.device)


# A pass-saving policy around a generation (``benchmarks.pass_saving``): given the pipeline, a
# context manager that holds the policy for the call and yields its step-end callback, if any.
GenerationPolicy = Callable[[Any], AbstractContextManager[Callable[..., Any] | None]]


def measure_generation(
    transformer: nn.Module,
    settings: E2ESettings,
    target: RuntimeTarget,
    policy: GenerationPolicy | None = None,
) -> GenerationResult:
    """Peak GPU memory and wall time of one whole ``WanPipeline`` generation (module doc),
    under ``policy`` when given."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer, text_encoder = stand_in_text_encoder(settings.text_encoder, settings.seed)
    vae = random_wan_vae(settings.vae, target.device, target.dtype, settings.seed)
    # Any: mypy resolves diffusers' pipeline classes to their dummy placeholders.
    pipeline: Any = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,  # stays on the CPU: excluded from the GPU peak
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    pipeline.vae.enable_tiling()
    pipeline.set_progress_bar_config(disable=True)
    video = settings.video
    model_bytes = resident_bytes(transformer) + resident_bytes(vae)
    _reset_peak(target)
    start_bytes = torch.cuda.memory_allocated(target.device) if target.is_cuda else None
    if start_bytes is not None and start_bytes > model_bytes + _STRAY_BYTES:
        logger.warning(
            "%.2f GiB allocated before the generation, %.2f GiB of it not the pipeline's models: "
            "the peak includes it",
            start_bytes / GIB,
            (start_bytes - model_bytes) / GIB,
        )
    around = policy(pipeline) if policy is not None else contextlib.nullcontext()
    began = time.perf_counter()
    try:
        with torch.inference_mode(), around as callback:
            output = pipeline(
                prompt=_PROMPT,
                negative_prompt=_NEGATIVE_PROMPT,
                height=video.height,
                width=video.width,
                num_frames=video.frames,
                num_inference_steps=settings.generation_steps,
                guidance_scale=settings.guidance_scale,
                generator=torch.Generator(device=target.device).manual_seed(settings.seed),
                output_type="np",
                max_sequence_length=settings.text_encoder.max_tokens,
                callback_on_step_end=callback,
            )
    except torch.OutOfMemoryError as err:
        peak = torch.cuda.max_memory_allocated(target.device)
        message = f"out of memory (peak {peak / GIB:.1f} GiB before failing): {str(err)[:120]}"
        logger.warning("generation failed: %s", message)
        return GenerationResult(
            settings.generation_steps, None, peak, None, model_bytes, start_bytes, message
        )
    finally:
        del pipeline, vae
    seconds = time.perf_counter() - began
    peak_bytes = torch.cuda.max_memory_allocated(target.device) if target.is_cuda else None
    frames_shape = tuple(output.frames.shape[1:])
    return GenerationResult(
        settings.generation_steps, seconds, peak_bytes, frames_shape, model_bytes, start_bytes
    )


def time_guided_step(
    transformer: nn.Module, arch: WanArchitecture, settings: E2ESettings, target: RuntimeTarget
) -> list[float]:
    """Times (ms) of ``settings.timed_steps`` guided steps after the warm-up ones."""
    inputs = _step_inputs(settings, arch, target)

    def step() -> torch.Tensor:
        return denoising_step(transformer, inputs, settings.guidance_scale)

    with torch.inference_mode():
        return time_ms(step, target.device, settings.warmup_steps, settings.timed_steps)


def _time_peer(
    peer: Peer,
    model: PeerModel,
    arch: WanArchitecture,
    settings: E2ESettings,
    target: RuntimeTarget,
) -> PeerResult:
    began = time.perf_counter()
    try:
        model.prepare(peer, settings.compile)
        times = time_guided_step(model.transformer, arch, settings, target)
    except Exception as error:  # a peer that fails (say, to compile) must not stop the others
        logger.exception("%s %s failed", arch.name, peer.value)
        _reset_peak(target)
        return PeerResult(
            peer, (), resident_bytes(model.transformer), count_quantized(model.transformer),
            error=f"{type(error).__name__}: {str(error)[:200]}",
        )  # fmt: skip
    logger.info(
        "%s %s step times (ms): %s (%.1f s with warm-up)",
        arch.name, peer.value, times, time.perf_counter() - began,
    )  # fmt: skip
    generation = None
    if (arch.name, peer) in settings.generation:
        generation = measure_generation(model.transformer, settings, target)
        logger.info("%s %s generation: %s", arch.name, peer.value, generation)
    return PeerResult(
        peer, tuple(times), resident_bytes(model.transformer), count_quantized(model.transformer),
        generation, fp8_impl=model.fp8_impl if peer.fp8 else None,
    )  # fmt: skip


def measure_variant(
    variant: ModelVariant, arch: WanArchitecture, settings: E2ESettings, target: RuntimeTarget
) -> list[PeerResult]:
    """Build ``arch`` as ``variant`` and take it through its peers (``benchmarks.peers``): time a
    guided step each, and run a whole generation where ``settings.generation`` asks.

    The step's inputs are freed before a generation, so its peak holds only the pipeline.
    """
    began = time.perf_counter()
    model = PeerModel(_build(variant, arch, target, settings.seed))
    logger.info("%s %s built in %.1f s", arch.name, variant.value, time.perf_counter() - began)
    try:
        return [
            _time_peer(peer, model, arch, settings, target)
            for peer in settings.peers
            if peer.variant is variant
        ]
    finally:
        model.release()


def run_benchmark(settings: E2ESettings, device: str = "cuda") -> list[ModelResult]:
    """Measure every architecture of ``settings`` on ``device`` (module doc)."""
    target = resolve_target(device)
    results = []
    for arch in settings.architectures:
        tokens = settings.video.tokens(arch, settings.vae)
        peers: list[PeerResult] = []
        # Each model is freed before the next is built (the results hold no tensors).
        for variant in ModelVariant:
            if not any(peer.variant is variant for peer in settings.peers):
                continue
            peers.extend(measure_variant(variant, arch, settings, target))
            _reset_peak(target)
        attention = attention_ms_per_step(arch, tokens, target, settings)
        results.append(ModelResult(arch.name, tokens, attention, tuple(peers)))
        # Logged as it completes, so a run cut short still leaves the finished models.
        logger.info("result %s", json.dumps(to_json(results[-1:])[0]))
    return results


def to_json(results: list[ModelResult]) -> list[dict[str, Any]]:
    """Plain data (enums as their values) for ``--json``."""
    return dataclasses_to_json(results)


def settings_from_args(args: argparse.Namespace) -> E2ESettings:
    known = {a.name: a for a in WAN_ARCHITECTURES}
    generation = tuple(
        (name, peer) for name in args.generation_models for peer in args.generation_peers
    )
    return E2ESettings(
        architectures=tuple(known[name] for name in args.models),
        video=VideoSize(args.frames, args.height, args.width),
        peers=tuple(sorted(set(args.peers) | {Peer.BF16, Peer.W4A4}, key=list(Peer).index)),
        compile=CompileSettings(scope=args.compile_scope),
        generation=generation,
        warmup_steps=args.warmup_steps,
        timed_steps=args.timed_steps,
        generation_steps=args.generation_steps,
        guidance_scale=args.guidance,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        logger.error("qvgen bench e2e needs a CUDA GPU")
        return 2
    from benchmarks.kernels import BENCHMARKS_HEADER, environment
    from qvgen.provenance import git_commit

    settings = settings_from_args(args)
    env = environment(args.commit or git_commit())
    results = run_benchmark(settings, args.device)
    print(f"{env['card']} {env['date']} commit {env['commit']}")
    print(peers_table(results))
    print(results_table(results))
    if generations_table(results):
        print(generations_table(results))
    for check in goal_checks(results):
        print(check.line())
    append_section(Path(args.benchmarks), section_text(results, settings, env), BENCHMARKS_HEADER)
    if args.json:
        payload = {"environment": env, "results": to_json(results)}
        Path(args.json).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``bench e2e`` (defaults from ``E2ESettings``)."""
    defaults = E2ESettings()
    names = [a.name for a in WAN_ARCHITECTURES]
    parser.add_argument("--models", nargs="+", choices=names, default=names)
    parser.add_argument("--frames", type=int, default=defaults.video.frames)
    parser.add_argument("--height", type=int, default=defaults.video.height)
    parser.add_argument("--width", type=int, default=defaults.video.width)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--timed-steps", type=int, default=defaults.timed_steps)
    parser.add_argument(
        "--generation-models",
        nargs="*",
        choices=names,
        default=sorted({name for name, _ in defaults.generation}),
        help="models whose whole-generation peak VRAM is measured (none: skip)",
    )
    parser.add_argument(
        "--generation-peers",
        nargs="+",
        type=Peer,
        choices=list(Peer),
        default=[peer for _, peer in defaults.generation],
        help="peers whose whole generation is measured (wall clock and peak VRAM)",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        type=Peer,
        choices=list(Peer),
        default=list(defaults.peers),
        help="configurations to time (bf16 and w4a4 eager always run)",
    )
    parser.add_argument(
        "--compile-scope",
        type=CompileScope,
        choices=list(CompileScope),
        default=defaults.compile.scope,
        help="what the compiled peers compile: each block (fast to build) or the whole model",
    )
    parser.add_argument("--generation-steps", type=int, default=defaults.generation_steps)
    parser.add_argument("--guidance", type=float, default=defaults.guidance_scale)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="cuda", help="'cuda' or 'cuda:N'")
    parser.add_argument("--benchmarks", default="BENCHMARKS.md", help="markdown file to append to")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    parser.add_argument("--commit", default=None, help="commit to record (default: git HEAD)")
    parser.set_defaults(handler=run)


def register(subparsers: Any) -> None:
    """Add ``bench e2e``."""
    add_arguments(
        command_group(subparsers, "bench", "benchmarks that append to BENCHMARKS.md").add_parser(
            "e2e",
            help="Wan 2.1 1.3B/14B guided step and generation: W4A4 against bf16 (eager and "
            "compiled) and FP8 rowwise + compile, on this GPU",
        )
    )


def main() -> int:
    """``python -m benchmarks.e2e [flags]``: without the rest of the CLI (whose other
    commands import the HTTP service)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e")
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
