"""``qvgen data synthetic``: write a synthetic text-to-video data set.

qvgen data synthetic --out DIR --count N --seed S [--frames 17 --size 64 --fps 8]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.synthetic.dataset import DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_SIDE, write_dataset

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with its ``synthetic`` subcommand."""
    data = subparsers.add_parser("data", help="make training and evaluation data sets")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    synthetic = data_commands.add_parser(
        "synthetic",
        help="coloured shapes moving over plain backgrounds, with prompts and ground truth",
        description=(
            "Write COUNT clips in the video-folder layout (videos.txt, prompts.txt, "
            "metadata.jsonl, videos/NNNNNN.mp4). Clip i depends on (seed, i) only."
        ),
    )
    synthetic.add_argument("--out", type=Path, required=True, help="a new directory")
    synthetic.add_argument("--count", type=int, required=True, help="number of clips")
    synthetic.add_argument("--seed", type=int, required=True, help="≥ 0")
    synthetic.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per clip")
    synthetic.add_argument(
        "--size", type=int, default=DEFAULT_SIDE, help="frame side in pixels (even)"
    )
    synthetic.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate")
    synthetic.set_defaults(handler=_run_synthetic)


def _run_synthetic(args: argparse.Namespace) -> int:
    write_dataset(
        args.out,
        count=args.count,
        seed=args.seed,
        frames=args.frames,
        side=args.size,
        fps=args.fps,
    )
    return 0
