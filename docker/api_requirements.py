#!/usr/bin/env python3
"""Prints the API image's pip requirements, one a line, read from ``pyproject.toml``.

The API needs the ``service`` extra and, of the core dependencies, only those it imports
(``API_CORE``): ``numpy`` comes in through ``service.engine.types``, which ``service.cli``
imports for the worker's engine kinds. The rest of the core (torch, diffusers, transformers,
accelerate) is what the API image is built to leave out; ``tests/deploy`` checks that every
module the API imports is covered by this list. Usage: ``api_requirements.py [PYPROJECT]``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

API_CORE = frozenset({"numpy"})
EXTRA = "service"


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 line: ``"Foo_bar>=1"`` → ``"foo-bar"``."""
    name = re.split(r"[\s<>=!~\[;@(]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def api_requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    core = [r for r in project["dependencies"] if requirement_name(r) in API_CORE]
    missing = API_CORE - {requirement_name(r) for r in core}
    if missing:
        raise SystemExit(f"{pyproject}: core dependencies lack {sorted(missing)}")
    return [*core, *project["optional-dependencies"][EXTRA]]


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pyproject.toml")
    sys.stdout.write("\n".join(api_requirements(path)) + "\n")
