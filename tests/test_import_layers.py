"""The packages' import directions, read from the source: each floor imports only the floors
below it (``docs/architecture.md``).

    qvgen/                     the contract: imports nothing of the project above it
    service/, training/        import qvgen and themselves, never each other
    evaluation/                generates with the engine and scores: qvgen, service, training
    benchmarks/, recipes/      tools over both halves (recipes may use evaluation's metrics)

Every ``import`` and ``from … import`` counts, inside functions too (a lazy import is still a
dependency). A test runs the same check over source written to violate it, so the rule can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("qvgen", "service", "training", "evaluation", "benchmarks", "recipes")
ALLOWED: dict[str, frozenset[str]] = {
    "qvgen": frozenset({"qvgen"}),
    "service": frozenset({"qvgen", "service"}),
    "training": frozenset({"qvgen", "training"}),
    "evaluation": frozenset({"qvgen", "service", "training", "evaluation"}),
    "benchmarks": frozenset({"qvgen", "service", "training", "evaluation", "benchmarks"}),
    "recipes": frozenset({"qvgen", "service", "training", "evaluation", "recipes"}),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(name: str, source: str) -> list[str]:
    """One line per import of the file ``name`` (relative to the root) that reaches a floor its
    package may not."""
    package = name.split("/")[0]
    allowed = ALLOWED[package]
    lines = []
    for line, module in imported_modules(source):
        top = module.split(".")[0]
        if top in PROJECT and top not in allowed:
            lines.append(
                f"{name}:{line} imports {module} "
                f"({package}/ may import only {', '.join(sorted(allowed))})"
            )
    return lines


@pytest.mark.parametrize("package", PROJECT)
def test_each_package_imports_only_the_floors_below_it(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ holds no Python file"
    found = [
        line
        for path in files
        for line in violations(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"))
    ]
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_the_check_names_the_file_and_the_import_that_break_it() -> None:
    source = (
        "import qvgen.numerics\n\ndef f():\n    from training.quant.swap import quantize_linears\n"
    )
    assert violations("service/_layering_probe.py", source) == [
        "service/_layering_probe.py:4 imports training.quant.swap "
        "(service/ may import only qvgen, service)"
    ]
