"""The training-side ``qvgen`` commands alone: ``python -m training.tiny_model.training_cli``.

``qvgen`` itself imports every part's commands, the service's too (pydantic, FastAPI, Redis);
GPU machines lent for training carry only the training stack. This entry registers just the
commands ``reproduce.sh`` drives, with the same arguments as under ``qvgen``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

TRAINING_COMMAND_MODULES: tuple[str, ...] = (
    "training.synthetic.cli",
    "training.cli",
    "training.tiny_model.cli",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qvgen (training commands)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in TRAINING_COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
