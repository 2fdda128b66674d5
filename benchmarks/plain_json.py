"""Benchmark results as plain JSON values: what ``--json`` writes."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


def plain(value: Any) -> Any:
    """``value`` with every enum replaced by its value, dicts, lists and tuples walked."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def dataclasses_to_json(items: list[Any]) -> list[dict[str, Any]]:
    """Each dataclass instance as a plain dict (``dataclasses.asdict``, then ``plain``)."""
    return [plain(dataclasses.asdict(item)) for item in items]
