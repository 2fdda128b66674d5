"""``python -m benchmarks.pass_saving``: what a saved transformer pass is worth at Wan shapes.

For each architecture (``random_models``: the real Wan 2.1 1.3B / 14B configs, random weights)
at 81 × 480 × 832 (32 760 tokens) and each peer (``benchmarks.peers``: ours W4A4, eager and
compiled; bf16 + compile, the strongest dense peer), with CUDA events, median of ``--repeats``:

* **full pass**: one transformer call, no hook;
* **policy overhead**: the same call with a policy's hooks on and its threshold set so that it
  never skips (diffusers' first-block cache, ours pooled, diffusers' MagCache): what checking
  costs on a pass that runs — the first block's residual, the criterion, the residuals the tail
  keeps — as a difference of medians and a share of the full pass;
* **cached pass**: a call the policy skips — first-block policies run the first block and add
  the cached residual, MagCache runs no block;
* **criterion alone**: ``pooled_relative_change`` and diffusers' criterion on two residuals of
  the model's width.

Then whole 50-step generations (``benchmarks.e2e.measure_generation``: real Wan VAE config, stand-
in text encoder on the CPU) of the generation peers, plain and under a **fixed schedule** of the
rate the qvgen-tiny frontier recommends (``--guidance-stop``, ``--keep-first``, ``--every``: the
first-block cache's head decides by step number instead of by its criterion, so the passes
skipped are the same on every run and every card). Random weights cannot show which passes a real
model would skip; the schedule only converts a skip rate into seconds and memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK, FBCHeadBlockHook
from diffusers.hooks.hooks import HookRegistry
from torch import nn

from benchmarks.e2e import E2ESettings, VideoSize, _step_inputs, measure_generation
from benchmarks.kernels import BENCHMARKS_HEADER, environment
from benchmarks.peers import CompileSettings, ModelVariant, Peer, PeerModel
from benchmarks.random_models import (
    UMT5_STAND_IN,
    WAN_2_1_VAE,
    WAN_ARCHITECTURES,
    VaeArchitecture,
    WanArchitecture,
)
from benchmarks.timing import time_ms
from qvgen.provenance import git_commit
from qvgen.tiny_pipelines import TextEncoderSize
from service.engine.caching.guidance import GuidanceStop
from service.engine.caching.pooled_first_block import (
    enable_pooled_first_block_cache,
    pooled_relative_change,
)
from service.engine.compilation import repeated_blocks
from service.engine.environment import RuntimeTarget, resolve_target

logger = logging.getLogger(__name__)

GIB = 2**30
# Thresholds that make each policy always run (overhead) or always skip (cached pass).
_NEVER_SKIP, _ALWAYS_SKIP = -1.0, 1e9


@dataclass(frozen=True)
class Schedule:
    """A fixed skip schedule over N steps: every step before ``keep_first`` · N, the last step
    and every ``every``-th step after the first ones run in full; the others are cached passes
    (the first block only). Guidance stops after ``guidance_stop`` of the steps."""

    keep_first: float = 0.2
    every: int = 2
    guidance_stop: float = 0.5

    def computes(self, step: int, steps: int) -> bool:
        first = round(self.keep_first * steps)
        return step < first or step == steps - 1 or (step - first) % self.every == 0

    def full_passes(self, steps: int) -> int:
        kept = GuidanceStop(nn.Identity(), 5.0, self.guidance_stop, steps).kept
        computed = [self.computes(i, steps) for i in range(steps)]
        return sum(computed) + sum(computed[:kept])


class _ScheduledHead(FBCHeadBlockHook):
    """diffusers' first-block head that decides by the step number (``CacheContext``)."""

    def __init__(self, head: FBCHeadBlockHook, schedule: Schedule) -> None:
        super().__init__(head.state_manager, head.threshold)
        self.schedule = schedule

    @torch.compiler.disable
    def _should_compute_remaining_blocks(self, hidden_states_residual: torch.Tensor) -> bool:
        context = self.state_manager.context
        assert context.step_index is not None and context.num_inference_steps is not None
        return self.schedule.computes(context.step_index, context.num_inference_steps)


@contextlib.contextmanager
def _scheduled(pipeline: Any, schedule: Schedule, steps: int) -> Iterator[Callable[..., Any]]:
    transformer = pipeline.transformer
    transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    registry = HookRegistry.check_if_exists_or_initialize(repeated_blocks(transformer)[0])
    head = registry.get_hook(_FBC_LEADER_BLOCK_HOOK)
    assert isinstance(head, FBCHeadBlockHook)
    registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=False)
    registry.register_hook(_ScheduledHead(head, schedule), _FBC_LEADER_BLOCK_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    guidance = GuidanceStop(transformer, 5.0, schedule.guidance_stop, steps)

    def callback(pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        guidance.after_step(pipe, index)
        return kwargs

    try:
        yield callback
    finally:
        transformer.disable_cache()


@dataclass(frozen=True)
class PassTimes:
    """Median ms of one transformer call under each configuration (module docstring)."""

    full: float
    overhead: dict[str, float]
    cached_first_block: float
    cached_magcache: float
    criterion: dict[str, float]


@dataclass(frozen=True)
class GenerationPair:
    steps: int
    plain_s: float | None
    scheduled_s: float | None
    plain_peak_gib: float | None
    scheduled_peak_gib: float | None
    full_passes: int
    plain_passes: int


@dataclass
class PeerPasses:
    model: str
    peer: str
    passes: PassTimes | None = None
    generation: GenerationPair | None = None
    error: str | None = None


@dataclass(frozen=True)
class PassSettings:
    architectures: tuple[WanArchitecture, ...] = WAN_ARCHITECTURES
    peers: tuple[Peer, ...] = (Peer.W4A4, Peer.W4A4_COMPILE)
    generation_peers: tuple[Peer, ...] = (Peer.W4A4_COMPILE,)
    steps: int = 50
    repeats: int = 5
    schedule: Schedule = field(default_factory=Schedule)
    video: VideoSize = field(default_factory=VideoSize)
    pass_times: bool = True
    vae: VaeArchitecture = WAN_2_1_VAE
    text_encoder: TextEncoderSize = UMT5_STAND_IN
    compile: CompileSettings = field(default_factory=CompileSettings)
    seed: int = 0

    def e2e(self, arch: WanArchitecture) -> E2ESettings:
        """The end-to-end benchmark's settings for the parts shared with it."""
        return E2ESettings(
            architectures=(arch,),
            video=self.video,
            vae=self.vae,
            text_encoder=self.text_encoder,
            compile=self.compile,
            generation=(),
            generation_steps=self.steps,
            seed=self.seed,
        )


def _median_call(transformer: nn.Module, inputs: dict[str, torch.Tensor], repeats: int) -> float:
    def call() -> torch.Tensor:
        with transformer.cache_context("cond"):  # type: ignore[operator]
            return transformer(
                hidden_states=inputs["latents"],
                timestep=inputs["timestep"],
                encoder_hidden_states=inputs["prompt"],
                return_dict=False,
            )[0]

    with torch.inference_mode():
        # Warm-up calls also fill the policy's state (the first call always runs every block).
        return statistics.median(time_ms(call, inputs["latents"].device, 2, repeats))


@contextlib.contextmanager
def _policy(transformer: Any, name: str, threshold: float) -> Iterator[None]:
    blocks = repeated_blocks(transformer)
    if name == "first-block":
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    elif name == "first-block-pooled":
        enable_pooled_first_block_cache(transformer, blocks[0], threshold)
    else:
        skip_always = threshold == _ALWAYS_SKIP
        transformer.enable_cache(
            MagCacheConfig(
                threshold=threshold,
                max_skip_steps=10**9 if skip_always else 3,
                retention_ratio=0.0,
                num_inference_steps=10**6,
                mag_ratios=[1.0] * 2,
            )
        )
    try:
        yield
    finally:
        transformer.disable_cache()


def _criterion_ms(width: int, tokens: int, target: RuntimeTarget, repeats: int) -> dict[str, float]:
    gen = torch.Generator(device=target.device).manual_seed(0)
    a, b = (
        torch.randn((1, tokens, width), generator=gen, device=target.device, dtype=target.dtype)
        for _ in range(2)
    )

    def diffusers_criterion() -> float:  # FBCHeadBlockHook._should_compute_remaining_blocks
        return float(((a - b).abs().mean() / b.abs().mean()).item())

    return {
        "first-block": statistics.median(time_ms(diffusers_criterion, target.device, 2, repeats)),
        "first-block-pooled": statistics.median(
            time_ms(lambda: pooled_relative_change(a, b), target.device, 2, repeats)
        ),
    }


def measure_passes(
    transformer: nn.Module, arch: WanArchitecture, settings: PassSettings, target: RuntimeTarget
) -> PassTimes:
    e2e = settings.e2e(arch)
    inputs = _step_inputs(e2e, arch, target)
    full = _median_call(transformer, inputs, settings.repeats)
    overhead = {}
    for name in ("first-block", "first-block-pooled", "magcache"):
        with _policy(transformer, name, _NEVER_SKIP):
            overhead[name] = _median_call(transformer, inputs, settings.repeats) - full
    with _policy(transformer, "first-block", _ALWAYS_SKIP):
        cached_first_block = _median_call(transformer, inputs, settings.repeats)
    with _policy(transformer, "magcache", _ALWAYS_SKIP):
        cached_magcache = _median_call(transformer, inputs, settings.repeats)
    tokens = settings.video.tokens(arch, e2e.vae)
    criterion = _criterion_ms(arch.num_heads * arch.head_dim, tokens, target, settings.repeats)
    return PassTimes(full, overhead, cached_first_block, cached_magcache, criterion)


def measure_generations(
    transformer: nn.Module, arch: WanArchitecture, settings: PassSettings, target: RuntimeTarget
) -> GenerationPair:
    e2e = settings.e2e(arch)
    plain = measure_generation(transformer, e2e, target)
    logger.info("%s plain generation: %s", arch.name, plain)
    scheduled = measure_generation(
        transformer, e2e, target, lambda p: _scheduled(p, settings.schedule, settings.steps)
    )
    logger.info("%s scheduled generation: %s", arch.name, scheduled)

    def gib(value: int | None) -> float | None:
        return None if value is None else value / GIB

    return GenerationPair(
        settings.steps,
        plain.seconds,
        scheduled.seconds,
        gib(plain.peak_bytes),
        gib(scheduled.peak_bytes),
        settings.schedule.full_passes(settings.steps),
        2 * settings.steps,
    )


def _build(peer: Peer, arch: WanArchitecture, target: RuntimeTarget, seed: int) -> nn.Module:
    from benchmarks.random_models import random_bf16_transformer, random_packed_transformer

    if peer.variant is ModelVariant.BF16:
        return random_bf16_transformer(arch, target.device, target.dtype, seed)
    return random_packed_transformer(arch, target.device, target.dtype, seed, fuse_projections=True)


def run_benchmark(
    settings: PassSettings, device: str = "cuda", progress: Path | None = None
) -> list[PeerPasses]:
    """Every peer of every architecture; each result is also appended to ``progress`` (JSON
    lines) as it finishes, so that a run stopped at its time limit keeps what it measured."""
    target = resolve_target(device)
    results = []
    for arch in settings.architectures:
        for variant in (ModelVariant.W4A4, ModelVariant.BF16):
            peers = [p for p in Peer if p in settings.peers and p.variant is variant]
            if not peers:
                continue
            model = PeerModel(_build(peers[0], arch, target, settings.seed))
            try:
                for peer in peers:
                    result = PeerPasses(arch.name, peer.value)
                    began = time.perf_counter()
                    try:
                        model.prepare(peer, settings.compile)
                        if settings.pass_times:
                            result.passes = measure_passes(
                                model.transformer, arch, settings, target
                            )
                        if peer in settings.generation_peers:
                            result.generation = measure_generations(
                                model.transformer, arch, settings, target
                            )
                    except Exception as error:  # one failing peer must not stop the others
                        logger.exception("%s %s failed", arch.name, peer.value)
                        result.error = f"{type(error).__name__}: {str(error)[:200]}"
                    logger.info(
                        "%s %s in %.1f s: %s", arch.name, peer.value,
                        time.perf_counter() - began, result,
                    )  # fmt: skip
                    results.append(result)
                    if progress is not None:
                        with progress.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(asdict(result)) + "\n")
            finally:
                model.release()
                del model
    return results


def report(results: list[PeerPasses], settings: PassSettings) -> str:
    lines = [
        "| model | peer | full pass ms | overhead ms (% of full): first-block / pooled / "
        "magcache | cached pass ms: first block only / magcache | criterion ms: diffusers / "
        "pooled |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.passes is None:
            if r.error is not None:
                lines.append(f"| {r.model} | {r.peer} | failed: {r.error} | | | |")
            continue
        p = r.passes
        over = " / ".join(
            f"{p.overhead[k]:.2f} ({100 * p.overhead[k] / p.full:.1f} %)"
            for k in ("first-block", "first-block-pooled", "magcache")
        )
        lines.append(
            f"| {r.model} | {r.peer} | {p.full:.1f} | {over} | {p.cached_first_block:.2f} "
            f"({100 * p.cached_first_block / p.full:.1f} %) / {p.cached_magcache:.2f} "
            f"({100 * p.cached_magcache / p.full:.1f} %) | {p.criterion['first-block']:.3f} / "
            f"{p.criterion['first-block-pooled']:.3f} |"
        )
    generations = [r for r in results if r.generation is not None]
    if generations:
        s = settings.schedule
        lines += [
            "",
            f"Fixed schedule: every step of the first {s.keep_first:.0%}, then every "
            f"{s.every}th step and the last run in full, the others are first-block cached "
            f"passes; guidance stops after {s.guidance_stop:.0%} of the steps.",
            "",
            "| model | peer | steps | full passes (plain) | plain s | scheduled s | speed-up "
            "| peak GiB plain / scheduled |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in generations:
            g = r.generation
            assert g is not None
            ratio = f"{g.plain_s / g.scheduled_s:.2f}×" if g.plain_s and g.scheduled_s else "–"
            lines.append(
                f"| {r.model} | {r.peer} | {g.steps} | {g.full_passes} ({g.plain_passes}) | "
                f"{g.plain_s or float('nan'):.1f} | {g.scheduled_s or float('nan'):.1f} | "
                f"{ratio} | {g.plain_peak_gib or float('nan'):.2f} / "
                f"{g.scheduled_peak_gib or float('nan'):.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = {a.name: a for a in WAN_ARCHITECTURES}
    parser.add_argument("--models", nargs="+", default=list(names), choices=list(names))
    peers = [p.value for p in Peer]
    parser.add_argument("--peers", nargs="+", default=["w4a4", "w4a4+compile"], choices=peers)
    parser.add_argument("--generation-peers", nargs="*", default=["w4a4+compile"], choices=peers)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-first", type=float, default=Schedule.keep_first)
    parser.add_argument("--every", type=int, default=Schedule.every)
    parser.add_argument("--guidance-stop", type=float, default=Schedule.guidance_stop)
    parser.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--json", type=Path, default=None, help="JSON lines, one per peer")
    parser.add_argument(
        "--skip-pass-times", action="store_true", help="only the generations (long 14B calls)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = PassSettings(
        architectures=tuple(names[n] for n in args.models),
        peers=tuple(Peer(p) for p in args.peers),
        generation_peers=tuple(Peer(p) for p in args.generation_peers),
        steps=args.steps,
        repeats=args.repeats,
        schedule=Schedule(args.keep_first, args.every, args.guidance_stop),
        pass_times=not args.skip_pass_times,
    )
    results = run_benchmark(settings, progress=args.json)
    table = report(results, settings)
    print(table)
    env = environment(git_commit())
    header = "" if args.benchmarks.exists() else BENCHMARKS_HEADER
    with args.benchmarks.open("a", encoding="utf-8") as f:
        f.write(header)
        f.write(
            f"\n## Transformer passes at Wan shapes (`python -m benchmarks.pass_saving`), "
            f"{env['card']}, {env['date']}, commit {env['commit']}\n\ntorch {env['torch']}, "
            f"Triton {env['triton']}; random weights, {settings.video.frames}×"
            f"{settings.video.height}×{settings.video.width}, median of {settings.repeats} "
            f"calls (CUDA events).\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
