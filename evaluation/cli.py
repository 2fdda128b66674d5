"""``qvgen eval``: PSNR/SSIM (and task scores) of a quantized pipeline against its full-precision
one, generated through the serving engine (``evaluation.compare``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _read_prompts(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path} line {number}: empty prompt")
    if not lines:
        raise ValueError(f"{path} holds no prompt")
    return [line.strip() for line in lines]


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must be ≥ 0, got {text!r}")
    return seeds


def _run_eval(args: argparse.Namespace) -> int:
    from evaluation.compare import evaluate, load_scorer, write_report
    from evaluation.settings import EvalSettings

    try:
        settings = EvalSettings(
            width=args.width,
            height=args.height,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
        )
        report = evaluate(
            args.reference,
            args.quantized,
            _read_prompts(args.prompts),
            _parse_seeds(args.seeds),
            settings,
            device=args.device,
            scorer=None if args.scorer is None else load_scorer(args.scorer),
        )
    except (ValueError, FileNotFoundError) as err:
        logger.error("qvgen eval: %s", err)
        return 2
    print(report.table())  # the command's output: a table for the terminal
    if args.json:
        logger.info("wrote %s", write_report(report, args.json))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="PSNR/SSIM (and task scores) of a quantized pipeline vs full precision"
    )
    p.add_argument("--reference", required=True, help="full-precision pipeline directory")
    p.add_argument("--quantized", required=True, help="quantized pipeline (qvgen export)")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--scorer", help="task scorer: 'synthetic' or module:function")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--json", help="also write the report as JSON here")
    p.set_defaults(handler=_run_eval)
