"""The README's "Serving" and "Deployment" sections as data: variable tables and the curl example."""

from __future__ import annotations

import re

from tests.deploy.compose import REPO

README = REPO / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def variable_rows(section_text: str) -> dict[str, list[str]]:
    """Table rows whose first cell is a `VARIABLE`: name → the other cells, backticks removed.

    A cell written as `""` stands for the empty value.
    """
    rows: dict[str, list[str]] = {}
    for line in section_text.splitlines():
        match = re.match(r"^\| `([A-Z][A-Z0-9_]*)` \|(.*)\|$", line)
        if match:
            cells = [cell.strip() for cell in match.group(2).split("|")]
            rows[match.group(1)] = [_unquote(cell) for cell in cells]
    return rows


def _unquote(cell: str) -> str:
    if re.fullmatch(r"`[^`]*`", cell):
        cell = cell[1:-1]
        return "" if cell == '""' else cell
    return cell


def curl_example() -> str:
    """The bash block of "Serving" that POSTs a video."""
    for block in re.findall(r"```bash\n(.*?)```", section("Serving"), re.S):
        if "/v1/videos" in block:
            return str(block)
    raise AssertionError("README's Serving section has no curl example")
