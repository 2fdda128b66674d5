"""``qvgen train`` and ``qvgen export``.

Flags map one to one onto ``TrainConfig`` fields, whose validation names the flag, the value and
the allowed range; the handler turns that ``ValueError`` into a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from training.quant.rank_decay import DecayShape
from training.trainer.config import LayerSelection, Method, Parallelism, TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_RANK = 32
_DEFAULTS = TrainConfig(model="", out="", method=Method.RTN, rank=0)


def _choices(enum_cls: Any) -> list[str]:
    return [e.value for e in enum_cls]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    method = Method(args.method)
    rank = args.rank if args.rank is not None else (DEFAULT_RANK if method is Method.QVGEN else 0)
    return TrainConfig(
        model=str(Path(args.model).resolve()),
        out=str(Path(args.out).resolve()),
        data=None if args.data is None else str(Path(args.data).resolve()),
        method=method,
        w_bits=args.w_bits,
        a_bits=args.a_bits,
        rank=rank,
        steps=args.steps,
        phase_steps=args.phase_steps,
        decay_shape=DecayShape(args.decay_shape),
        layers=LayerSelection(args.layers),
        clip_groups=args.clip_groups,
        frames=args.frames,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_clip=args.lr_clip,
        beta1=args.beta1,
        beta2=args.beta2,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        grad_clip=args.grad_clip,
        caption_dropout=args.caption_dropout,
        checkpoint_every=args.checkpoint_every,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        parallel=Parallelism(args.parallel),
        cache_dir=None if args.cache_dir is None else str(Path(args.cache_dir).resolve()),
        seed=args.seed,
    )


def _run_train(args: argparse.Namespace) -> int:
    from training.trainer.train import train

    try:
        config = config_from_args(args)
        out = train(config, resume=args.resume, device=args.device)
    except ValueError as err:
        logger.error("qvgen train: %s", err)
        return 2
    logger.info("run finished: %s", out)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from training.export_pipeline import export_pipeline

    try:
        out = export_pipeline(args.checkpoint, args.out, args.device)
    except (ValueError, FileNotFoundError) as err:
        logger.error("qvgen export: %s", err)
        return 2
    logger.info("wrote %s", out)
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    p = subparsers.add_parser(
        "train",
        help="QAT of a Wan 2.1 / CogVideoX transformer (QVGen, LSQ) or RTN quantization",
    )
    p.add_argument("--model", required=True, help="diffusers pipeline directory (the teacher)")
    p.add_argument("--data", help="video folder: videos.txt + prompts.txt (not for rtn)")
    p.add_argument("--out", required=True, help="run directory: config, log, checkpoints")
    p.add_argument("--method", default="qvgen", choices=_choices(Method))
    p.add_argument("--w-bits", type=int, default=d.w_bits, help="weight bits, 2–8")
    p.add_argument("--a-bits", type=int, default=d.a_bits, help="activation bits, 2–8")
    p.add_argument("--rank", type=int, help=f"Φ's initial rank (qvgen: default {DEFAULT_RANK})")
    p.add_argument("--steps", type=int, help="training steps N (qvgen, lsq)")
    p.add_argument("--phase-steps", type=int, help="rank-decay phase length T (default N / phases)")
    p.add_argument("--decay-shape", default=d.decay_shape.value, choices=_choices(DecayShape))
    p.add_argument("--layers", default=d.layers.value, choices=_choices(LayerSelection))
    p.add_argument("--clip-groups", type=int, default=d.clip_groups, help="timestep groups")
    p.add_argument("--frames", type=int, default=d.frames, help="bucket frames")
    p.add_argument("--height", type=int, default=d.height, help="bucket height (pixels)")
    p.add_argument("--width", type=int, default=d.width, help="bucket width (pixels)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=d.lr, help="W, L, R and weight quantizer lr")
    p.add_argument("--lr-clip", type=float, default=d.lr_clip, help="activation clip logits lr")
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta2", type=float, default=d.beta2)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up share of steps")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient L2 norm")
    p.add_argument("--caption-dropout", type=float, default=d.caption_dropout)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--parallel", default=d.parallel.value, choices=_choices(Parallelism))
    p.add_argument("--cache-dir", help="latent cache root (default: DATA/.qvgen-cache)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(handler=_run_train)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a checkpoint as a pipeline directory with a packed W4A4 transformer"
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder (latest)")
    p.add_argument("--out", required=True, help="pipeline directory to create")
    p.add_argument("--device", default="cpu", choices=["cuda", "cpu"])
    p.set_defaults(handler=_run_export)


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_train(subparsers)
    _add_export(subparsers)
