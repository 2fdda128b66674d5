"""The tables and the BENCHMARKS.md section of ``python -m benchmarks.ready_time``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.plain_json import dataclasses_to_json
from benchmarks.ready_runs import Phases, ReadyRun, RunKind, median_warm

if TYPE_CHECKING:
    from benchmarks.ready_time import ReadySettings

MIB = 2**20
SECTION_TITLE = (
    "Worker time to ready, cold and warm compile cache (`python -m benchmarks.ready_time`)"
)
# The timed phases of a run, in order, as the runs table heads them.
PHASE_COLUMNS = (
    ("start_s", "start s"),
    ("imports_s", "imports s"),
    ("load_s", "load s"),
    ("warm_up_s", "warm-up s"),
    ("ready_s", "ready s"),
)


def runs_table(runs: list[ReadyRun]) -> str:
    """One row per run: its phases, how the transformer ran, the compile cache after it."""
    head = (
        "| model | run | transformer | "
        + " | ".join(title for _, title in PHASE_COLUMNS)
        + " | FX-graph cache hits / misses | cache files (MiB) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        p = r.phases
        cells = [r.model, r.kind.value, p.compile_status.value]
        cells += [f"{getattr(p, name):.2f}" for name, _ in PHASE_COLUMNS]
        cells += [
            f"{p.fx_graph_cache_hits} / {p.fx_graph_cache_misses}",
            f"{r.cache_files} ({r.cache_bytes / MIB:.1f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(numerator: Phases | None, denominator: Phases | None, phase: str) -> str:
    if numerator is None or denominator is None:
        return "–"
    return f"{getattr(numerator, phase) / getattr(denominator, phase):.2f}"


def ratios_table(runs: list[ReadyRun]) -> str:
    """Per model: time to ready (and warm-up) of the compiled runs over eager and warm over
    cold; warm = the median warm run (``median_warm``)."""
    lines = [
        "| model | ready s eager / cold / warm | cold ÷ eager | warm ÷ eager | warm ÷ cold "
        "| warm-up: cold ÷ eager | warm ÷ eager | warm ÷ cold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r.model for r in runs):
        first = {r.kind: r.phases for r in reversed(runs) if r.model == model}
        eager, cold, warm = (
            first.get(RunKind.EAGER),
            first.get(RunKind.COLD),
            median_warm(runs, model),
        )
        seconds = " / ".join("–" if p is None else f"{p.ready_s:.2f}" for p in (eager, cold, warm))
        cells = [model, seconds]
        for phase in ("ready_s", "warm_up_s"):
            cells += [
                _ratio(cold, eager, phase),
                _ratio(warm, eager, phase),
                _ratio(warm, cold, phase),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_text(settings: ReadySettings, env: dict[str, Any]) -> str:
    w = settings.warm_up
    return (
        f"torch {env['torch']}, Triton {env['triton']}, {env['capability']}, device "
        f"`{settings.device}`. Each run is a fresh process doing what a worker does before it "
        "says ready (`benchmarks/ready_child.py`): start = the interpreter's start; imports = "
        "torch and the engine's modules; load = the pipeline onto the device; warm-up = one "
        f"generation of the worker's warm-up request ({w.num_frames}×{w.height}×{w.width}, "
        f"{w.num_inference_steps} steps, guidance {w.guidance_scale}), in which the "
        f"transformer's blocks compile (`{settings.backend}` backend); ready = spawn to ready. "
        "eager = compile off; cold = compiled with an empty inductor and Triton cache "
        "directory; warm = compiled again in a new process with the cold run's directory "
        f"({settings.repeats} run{'s' if settings.repeats > 1 else ''}; the ratios take the "
        "median). Cache files = what the directory held after the run."
    )


def section_text(runs: list[ReadyRun], settings: ReadySettings, env: dict[str, Any]) -> str:
    return (
        f"\n## {SECTION_TITLE}, {env['card']}, {env['date']}, commit {env['commit']}\n\n"
        f"{method_text(settings, env)}\n\n{runs_table(runs)}\n\n{ratios_table(runs)}\n"
    )


def to_json(runs: list[ReadyRun]) -> list[dict[str, Any]]:
    """The runs as plain JSON values (enums by value)."""
    return dataclasses_to_json(runs)
