"""``qvgen calibrate-cache``: MagCache's magnitude ratios measured on the model, written into it.

Runs each prompt once through the engine with diffusers' MagCache in calibration mode (every
pass runs; the hook records γ_i = mean‖r_i‖/‖r_{i−1}‖ per step and guidance branch), averages
the ratios over the prompts and stores them as one entry of ``cache_calibration.json`` for the
step count (``qvgen/checkpoint/cache_calibration.py``). A worker started afterwards offers
``cache=magcache`` for that step count.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qvgen.checkpoint.cache_calibration import (
    MagCacheEntry,
    read_calibration,
    write_calibration,
)
from service.engine.cli import add_shape_arguments
from service.engine.types import GenerationRequest

if TYPE_CHECKING:  # imported where used: the diffusers stack takes seconds to import
    from service.engine.diffusers_engine import DiffusersEngine

logger = logging.getLogger(__name__)


def measure_magcache(
    engine: DiffusersEngine, requests: Sequence[GenerationRequest]
) -> MagCacheEntry:
    """The mean of each branch's ratios over ``requests`` (one size, step count and guidance)."""
    if not requests:
        raise ValueError("calibration needs at least one prompt")
    first = requests[0]
    shape = (first.width, first.height, first.num_frames, first.num_inference_steps)
    sums: dict[str, list[float]] = {}
    for request in requests:
        if (
            request.width,
            request.height,
            request.num_frames,
            request.num_inference_steps,
        ) != shape:
            raise ValueError("calibration requests must share size, frames and steps")
        # diffusers prints the ratios it computed; they are kept below instead.
        with contextlib.redirect_stdout(io.StringIO()):
            ratios = engine.measure_magnitude_ratios(request)
        for branch, values in ratios.items():
            if len(values) != request.num_inference_steps:
                raise RuntimeError(
                    f"{branch}: {len(values)} ratios for {request.num_inference_steps} steps"
                )
            total = sums.setdefault(branch, [0.0] * len(values))
            sums[branch] = [a + b for a, b in zip(total, values, strict=True)]
    return MagCacheEntry(
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale,
        size=f"{first.width}x{first.height}",
        num_frames=first.num_frames,
        prompts=len(requests),
        ratios={b: tuple(v / len(requests) for v in total) for b, total in sums.items()},
    )


def register(subparsers: Any) -> None:
    """Add the ``calibrate-cache`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate-cache",
        help="measure a model's MagCache ratios and store them in its directory",
        description=(
            "Generate each --prompt once with every transformer pass running, measure MagCache's "
            "per-step magnitude ratios, and write their mean into MODEL/cache_calibration.json "
            "for this step count (other step counts already there are kept)."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="diffusers pipeline directory")
    parser.add_argument(
        "--prompt", action="append", required=True, help="a calibration prompt (repeat it)"
    )
    add_shape_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N'")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine.from_pretrained(args.model, device=args.device)
    requests = [
        GenerationRequest(
            prompt=prompt,
            width=args.width,
            height=args.height,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed + index,
        )
        for index, prompt in enumerate(args.prompt)
    ]
    try:
        for request in requests:
            engine.check(request)
    except ValueError as error:
        logger.error("invalid request: %s", error)
        return 2
    entry = measure_magcache(engine, requests)
    path = write_calibration(args.model, read_calibration(args.model).with_magcache(entry))
    logger.info(
        "%s: MagCache ratios for %d steps from %d prompts written to %s (first %s, last %s)",
        engine.model_id,
        entry.num_inference_steps,
        entry.prompts,
        path,
        ", ".join(f"{v:.3f}" for v in entry.mag_ratios[:3]),
        ", ".join(f"{v:.3f}" for v in entry.mag_ratios[-3:]),
    )
    return 0
