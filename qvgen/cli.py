"""The ``qvgen`` command line: wires the subcommands that each part of the project registers.

Every subcommand lives beside the code it drives and exposes ``register(subparsers)``; this
module only collects them, so adding a command never touches another part's code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

# Modules that define ``register(subparsers: argparse._SubParsersAction) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "service.engine.cli",
    "qvgen.checkpoint.cli",
    "training.synthetic.cli",
    "service.cli",
    "service.kernels.bench",
    "service.engine.bench_e2e",
    "training.cli",
    "training.tiny_model.cli",
)


def command_group(subparsers: Any, name: str, help: str) -> Any:
    """The sub-command set under ``qvgen <name>``, created by the first module that registers in
    it and shared with every later one (``qvgen bench kernels``, ``qvgen bench e2e``, …)."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        parser.add_subparsers(dest=f"{name}_target", metavar="TARGET", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"`qvgen {name}` exists without sub-commands; cannot add to it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvgen",
        description=(
            "QVGen: train video diffusion transformers down to 4 and 3 bits, export packed "
            "W4A4 weights, and serve them."
        ),
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    result = handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
