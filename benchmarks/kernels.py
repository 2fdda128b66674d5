"""``qvgen bench kernels``: our W4A4 linear against cuBLAS bf16, int8 and FP8 on this GPU.

Times every variant of ``bench_cases`` with ``triton.testing.do_bench`` (median), prints a ratio
table and the speed goals, appends the table to BENCHMARKS.md with card, date and commit, and
can dump the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qvgen.cli import command_group
from qvgen.provenance import git_commit

logger = logging.getLogger(__name__)

BENCHMARKS_HEADER = (
    "# Benchmarks\n\nMeasured figures, newest last. Every section names its card, date and "
    "commit; compare numbers only within one section (one card, one run).\n"
)
SPEEDUP_COLUMNS = ("w8a8", "w8a8-gemm", "fp8-tensor", "fp8-row", "ours", "ours-gemm")


@dataclass
class CaseResult:
    label: str
    large: bool
    model: str
    ops: float
    times_ms: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def speedup(self, variant: str, over: str = "bf16") -> float | None:
        """time(over) / time(variant): above 1 means ``variant`` is faster."""
        a, b = self.times_ms.get(over), self.times_ms.get(variant)
        return None if a is None or b is None else a / b


def measure(models: list[str], warmup_ms: int, rep_ms: int) -> list[CaseResult]:
    import triton.testing

    from benchmarks.kernel_cases import MODELS, build_variants, linear_cases

    device = torch.device("cuda")
    results = []
    for case in linear_cases(tuple(m for m in MODELS if m.name in models)):
        large = case.m != 256
        result = CaseResult(case.label, large, case.model, case.ops)
        for variant, fn in build_variants(case, device).items():
            try:
                fn()  # compiles and autotunes outside the timed region
                t = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
                result.times_ms[variant.value] = float(t)
            except (RuntimeError, ValueError) as err:
                result.times_ms[variant.value] = None
                result.errors[variant.value] = str(err).splitlines()[0][:160]
                logger.warning("%s %s failed: %s", case.label, variant.value, err)
        logger.info("%s: %s", case.label, result.times_ms)
        results.append(result)
        torch.cuda.empty_cache()
    return results


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def ratio_table(results: list[CaseResult]) -> str:
    head = (
        "| shape (M×K→N) | bf16 ms | bf16 TFLOPS | "
        + " | ".join(f"{c} ×bf16" for c in SPEEDUP_COLUMNS)
        + " | ours ÷ fp8-tensor | ours ÷ w8a8 | ours TOPS | quant ms | unpack ms | expand ms |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        t = r.times_ms
        bf16 = t.get("bf16")
        ours = t.get("ours")
        cells = [
            r.label,
            _fmt(bf16, 3),
            _fmt(None if bf16 is None else r.ops / bf16 / 1e9, 0),
            *(_fmt(r.speedup(c)) for c in SPEEDUP_COLUMNS),
            _fmt(r.speedup("ours", "fp8-tensor")),
            _fmt(r.speedup("ours", "w8a8")),
            _fmt(None if ours is None else r.ops / ours / 1e9, 0),
            _fmt(t.get("ours-quant"), 3),
            _fmt(t.get("gemm-unpack"), 3),
            _fmt(t.get("gemm-expand"), 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_lines(results: list[CaseResult]) -> list[str]:
    """The kernel speed goals, one line each with the measured value."""
    lines = []
    for r in (r for r in results if r.large):
        # (name, measured ratio, goal, whether the goal itself counts as met)
        checks = [("ours faster than w8a8", r.speedup("ours", "w8a8"), 1.0, False)]
        if r.model == "wan2.1-14b":
            checks += [("ours ≥ 1.6× bf16", r.speedup("ours"), 1.6, True)]
            checks += [("ours ≥ 0.9× fp8-tensor", r.speedup("ours", "fp8-tensor"), 0.9, True)]
        else:
            checks += [("ours ≥ 1.3× bf16", r.speedup("ours"), 1.3, True)]
        for name, value, goal, inclusive in checks:
            met = value is not None and (value >= goal if inclusive else value > goal)
            lines.append(f"{'met ' if met else 'MISS'} {r.label}: {name}: {_fmt(value)}")
    return lines


def environment(commit: str, device: str = "cuda") -> dict[str, Any]:
    """What a BENCHMARKS.md section names: the card (on a CPU ``device``: the processor and
    its cores), torch and Triton versions, date and commit."""
    import triton

    if torch.device(device).type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        card, capability = torch.cuda.get_device_name(device), f"sm_{major}{minor}"
    else:
        card = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
        capability = "cpu"
    return {
        "card": card,
        "capability": capability,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "commit": commit,
        "torch": torch.__version__,
        "triton": triton.__version__,
    }


def append_section(path: Path, env: dict[str, Any], table: str, goals: list[str]) -> None:
    text = "" if path.exists() else BENCHMARKS_HEADER
    text += (
        f"\n## W4A4 linear kernels (`qvgen bench kernels`), {env['card']}, {env['date']}, "
        f"commit {env['commit']}\n\n"
        f"torch {env['torch']}, Triton {env['triton']}, {env['capability']}. Median "
        "`triton.testing.do_bench` times; ×bf16 = bf16 time ÷ variant time (above 1 is faster). "
        "`ours` includes the activation quantization; w8a8 includes its (eager) activation "
        "quantization; fp8 columns time `torch._scaled_mm` alone.\n\n"
        f"{table}\n\nGoals (large M):\n\n" + "\n".join(f"- {g}" for g in goals) + "\n"
    )
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        logger.error("qvgen bench kernels needs a CUDA GPU")
        return 2
    from service.kernels.lowbit_gemm import tuned_configs

    env = environment(args.commit or git_commit())
    results = measure(args.models, args.warmup_ms, args.rep_ms)
    table = ratio_table(results)
    goals = goal_lines(results)
    print(f"{env['card']} {env['date']} commit {env['commit']}")
    print(table)
    print("\n".join(goals))
    append_section(Path(args.benchmarks), env, table, goals)
    if args.json:
        payload = {
            "environment": env,
            "results": [r.__dict__ for r in results],
            "tuned_configs": tuned_configs(),
        }
        Path(args.json).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return 0


def register(subparsers: Any) -> None:
    """Add ``bench kernels``."""
    from benchmarks.kernel_cases import MODELS

    parser = command_group(
        subparsers, "bench", "benchmarks that append to BENCHMARKS.md"
    ).add_parser(
        "kernels",
        help="time the W4A4 linear against bf16, int8 and FP8 cuBLAS on this GPU",
    )
    names = [m.name for m in MODELS]
    parser.add_argument("--models", nargs="+", choices=names, default=names)
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--benchmarks", default="BENCHMARKS.md", help="markdown file to append to")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    parser.add_argument("--commit", default=None, help="commit to record (default: git HEAD)")
    parser.set_defaults(handler=run)


def main() -> int:
    """Run without the rest of the CLI (whose other commands import diffusers)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
