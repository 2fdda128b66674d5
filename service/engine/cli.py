"""``qvgen generate``: one text-to-video generation from a pipeline directory, with a progress bar."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.engine.types import AttentionKernel, CompilePolicy, GenerationRequest

logger = logging.getLogger(__name__)

_DEFAULTS = GenerationRequest(prompt="")


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--width, --height, --frames, --steps and --guidance, with the request's defaults."""
    parser.add_argument("--width", type=int, default=_DEFAULTS.width)
    parser.add_argument("--height", type=int, default=_DEFAULTS.height)
    parser.add_argument("--frames", type=int, default=_DEFAULTS.num_frames)
    parser.add_argument("--steps", type=int, default=_DEFAULTS.num_inference_steps)
    parser.add_argument("--guidance", type=float, default=_DEFAULTS.guidance_scale)


def register(subparsers: Any) -> None:
    """Add the ``generate`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "generate",
        help="generate a video from a text prompt",
        description=(
            "Generate one video with a Wan 2.1 or CogVideoX diffusers pipeline directory (plain "
            "or with a packed W4A4 transformer) and write it as an H.264 MP4 plus a PNG thumbnail."
        ),
    )
    parser.add_argument("--model", required=True, help="diffusers pipeline directory")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", required=True, help="MP4 file to write")
    parser.add_argument("--thumbnail", default=None, help="PNG to write (default: beside --out)")
    parser.add_argument("--negative-prompt", default=_DEFAULTS.negative_prompt)
    add_shape_arguments(parser)
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--fps", type=int, default=_DEFAULTS.fps)
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument(
        "--offload-text-encoder",
        action="store_true",
        help="move the text encoder to CPU memory after encoding (CUDA)",
    )
    parser.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles")
    parser.add_argument(
        "--compile",
        type=CompilePolicy,
        choices=list(CompilePolicy),
        default=CompilePolicy.AUTO,
        help="torch.compile the transformer (auto: on CUDA, off on the CPU)",
    )
    parser.add_argument(
        "--compile-cache-dir", type=Path, default=None, help="keep compiled code here"
    )
    parser.add_argument(
        "--attention",
        type=AttentionKernel,
        choices=list(AttentionKernel),
        default=AttentionKernel.SDPA,
        help="self-attention kernel (int8: the 8-bit kernel, Wan only)",
    )
    parser.add_argument(
        "--cache",
        default="none",
        metavar="NAME[:THRESHOLD]",
        help=(
            "skip transformer passes: none, first-block, first-block-pooled or magcache "
            "(calibrated models: qvgen calibrate-cache), with an optional threshold"
        ),
    )
    parser.add_argument(
        "--guidance-stop",
        type=float,
        default=_DEFAULTS.guidance_stop,
        help="fraction of the steps, from the first, that run the unconditional pass (Wan)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load, check, generate, write; returns the exit status (2 for a request the model refuses)."""
    # Imported here: diffusers takes seconds to import, and every other qvgen command would pay.
    from service.engine.caching.offer import CacheDefaults
    from service.engine.compilation import CompileOptions
    from service.engine.diffusers_engine import DiffusersEngine
    from service.engine.loading import MemoryOptions
    from service.engine.output import write_video_files

    try:
        cache = CacheDefaults.parse(args.cache, args.guidance_stop)
    except ValueError as err:
        logger.error("--cache: %s", err)
        return 2
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        fps=args.fps,
        cache=cache.cache,
        cache_threshold=cache.cache_threshold,
        guidance_stop=cache.guidance_stop,
    )
    options = MemoryOptions(
        offload_text_encoder=args.offload_text_encoder, vae_tiling=args.vae_tiling
    )
    compile_options = CompileOptions(policy=args.compile, cache_dir=args.compile_cache_dir)
    engine = DiffusersEngine.from_pretrained(
        args.model,
        device=args.device,
        options=options,
        compile_options=compile_options,
        attention=args.attention,
    )
    try:
        engine.check(request)
    except ValueError as err:
        logger.error("invalid request: %s", err)
        return 2
    with tqdm(total=request.num_inference_steps, desc="denoising", unit="step") as bar:

        def on_step(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        video = engine.generate(request, on_step=on_step)
    files = write_video_files(video, args.out, args.thumbnail)
    stats = video.stats
    logger.info(
        "wrote %s and %s: %.2f s total, %.3f s/step, %d transformer passes (%d saved), "
        "peak VRAM %.2f GiB",
        files.video,
        files.thumbnail,
        stats.total_seconds,
        stats.seconds_per_step,
        stats.transformer_passes,
        stats.transformer_passes_saved,
        stats.peak_vram_bytes / 2**30,
    )
    return 0
