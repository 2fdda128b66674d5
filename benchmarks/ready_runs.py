"""What one run of ``benchmarks.ready_time`` yields: the child's phases and the cache it left.

Apart from ``benchmarks/ready_time.py`` because that one runs as ``__main__``: its classes
would then be others than those the report imports.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from service.engine.types import CompileStatus


class RunKind(enum.StrEnum):
    EAGER = "eager"  # compile off: the floor
    COLD = "cold"  # compiled, an empty cache directory
    WARM = "warm"  # compiled in a new process, the cold run's cache directory


@dataclass(frozen=True)
class Phases:
    """What a child reports (``benchmarks.ready_child``): seconds per phase, how the
    transformer ended up running, where its compile caches were, inductor's cache counters."""

    start_s: float
    imports_s: float
    load_s: float
    warm_up_s: float
    ready_s: float
    compile_status: CompileStatus
    inductor_cache_dir: str | None
    triton_cache_dir: str | None
    fx_graph_cache_hits: int
    fx_graph_cache_misses: int

    @classmethod
    def from_line(cls, line: str) -> Phases:
        """Parse the child's JSON line; a missing or unknown key raises ``TypeError``."""
        fields = json.loads(line)
        fields["compile_status"] = CompileStatus(fields["compile_status"])
        return cls(**fields)


@dataclass(frozen=True)
class ReadyRun:
    """One child: its phases, and the compile cache directory it was given, as the parent
    found it once the child had exited (files and bytes under it)."""

    model: str
    kind: RunKind
    phases: Phases
    cache_dir: str
    cache_files: int
    cache_bytes: int


def median_warm(runs: list[ReadyRun], model: str) -> Phases | None:
    """The warm run of ``model`` with the median time to ready (the lower middle of an even
    count), or None when there is none."""
    warm = sorted(
        (r.phases for r in runs if r.model == model and r.kind is RunKind.WARM),
        key=lambda p: p.ready_s,
    )
    return warm[(len(warm) - 1) // 2] if warm else None
