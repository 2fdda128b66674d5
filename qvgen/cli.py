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

# Top-level commands: their one-line help and the modules that register them. Each module
# defines ``register(subparsers)``; only the modules of the command being run are imported, so
# ``qvgen serve`` never pays for diffusers and ``qvgen --help`` imports nothing heavy.
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "generate": ("generate a video from a text prompt", ("service.engine.cli",)),
    "calibrate-cache": (
        "measure a model's MagCache ratios into its directory",
        ("service.engine.caching.calibration",),
    ),
    "serve": ("run the video-generation service", ("service.cli",)),
    "train": ("QVGen quantization-aware training of a pipeline's transformer", ("training.cli",)),
    "export": ("write a trained run as a pipeline with a packed transformer", ("training.cli",)),
    "eval": ("compare a quantized pipeline with its full-precision one", ("evaluation.cli",)),
    "data": ("make training and evaluation data sets", ("training.synthetic.cli",)),
    "tiny": ("the embedded qvgen-tiny model: recipe, comparison", ("recipes.tiny_model.cli",)),
    "import-release": (
        "convert a QVGen release checkpoint to format v1",
        ("qvgen.checkpoint.cli",),
    ),
    "bench": (
        "benchmarks that append to BENCHMARKS.md",
        ("benchmarks.service", "benchmarks.kernels", "benchmarks.e2e"),
    ),
}
COMMAND_MODULES: tuple[str, ...] = tuple(
    dict.fromkeys(module for _, modules in COMMANDS.values() for module in modules)
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


def _requested_command(argv: Sequence[str]) -> str | None:
    """The first positional argument (the command), skipping ``--log-level VALUE``."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: every command's full parser when ``argv`` is None, otherwise
    the full parser of the requested command and one-line entries for the others."""
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
    requested = None if argv is None else _requested_command(argv)
    if argv is None or requested in COMMANDS:
        modules = COMMAND_MODULES if argv is None else COMMANDS[str(requested)][1]
        for name in modules:
            importlib.import_module(name).register(subparsers)
    for command, (help_text, _) in COMMANDS.items():
        if command not in subparsers.choices:
            subparsers.add_parser(command, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
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
