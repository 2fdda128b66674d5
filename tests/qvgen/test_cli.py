"""The ``qvgen`` command line: every command is registered by its modules, and only those load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qvgen.cli import COMMANDS, build_parser


def _choices(parser) -> dict:  # type: ignore[no-untyped-def]
    return parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]


def test_full_parser_has_exactly_the_listed_commands() -> None:
    assert set(_choices(build_parser())) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_registered_by_its_own_modules(command: str) -> None:
    sub = _choices(build_parser([command]))[command]
    # a placeholder has only -h; a registered command has options or sub-commands
    assert len(sub._actions) > 1, f"{COMMANDS[command][1]} did not register {command!r}"


def test_help_and_serve_import_no_model_stack() -> None:
    code = (
        "import json, sys\n"
        "from qvgen.cli import build_parser\n"
        "build_parser(['--help'])\n"
        "top = {m for m in sys.modules}\n"
        "build_parser(['serve', 'api'])\n"
        "print(json.dumps([sorted(top), sorted(sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    top, serve = (set(x) for x in json.loads(out.stdout))
    for heavy in ("torch", "diffusers", "transformers"):
        assert heavy not in top, f"`qvgen --help` imports {heavy}"
    assert "diffusers" not in serve, "`qvgen serve` imports diffusers"
