"""``python -m benchmarks.ready_time``: how long a worker takes to become ready, by compile cache.

A worker says ready (registers, takes jobs) only after it has loaded its model, compiled the
transformer and run one warm-up generation (``service/worker/engines.py``). Inductor's and
Triton's generated code is kept under the worker's compile cache directory
(``service/engine/compilation.py`` ``use_cache_dir``), so that a restarted worker skips code
generation. This measures what that buys. For each model, in this order, each run a fresh
process (``benchmarks.ready_child``, whose docstring defines the phases), so that nothing
compiled in memory carries over:

* eager — compile off: the floor. Its Triton cache (the W4A4 kernels on CUDA) is a fresh
  directory of its own, so it builds its kernels as a cold compiled run does;
* cold — compiled, an empty cache directory: a worker's first start on a machine;
* warm — compiled again, the cold run's cache directory (``--repeats`` times): a restart.

The warm-up request is the worker's own (``service/cli.py`` ``default_warm_up``:
``QVGEN_DEFAULT_SIZE``, ``QVGEN_DEFAULT_NUM_FRAMES``, ``QVGEN_DEFAULT_GUIDANCE_SCALE``; two
steps), as are the attention kernel and CPU threads. The operating system's file cache is warm
for every run (this process has imported torch and diffusers, and the runs read the same model
files): the cache compared is the compile cache. ``--random-wan`` adds a real-size model with
random weights (``benchmarks/random_pipeline.py``), written before the runs. Prints a table,
appends a section to BENCHMARKS.md with card, date and commit, and can write the raw numbers as
JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from benchmarks.random_models import WAN_ARCHITECTURES
from benchmarks.ready_runs import Phases, ReadyRun, RunKind
from service.cli import default_warm_up
from service.engine.types import CompilePolicy, GenerationRequest
from service.settings import ServiceSettings
from service.worker.engines import EngineKind, model_id_for

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "models" / "qvgen-tiny-w4a4"
# Where the compile caches live in a child: set per run, never inherited from this process.
_CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@dataclass(frozen=True)
class ReadySettings:
    """What every run shares. ``service``: the worker's settings (``QVGEN_*`` variables), whose
    warm-up request, attention kernel and CPU threads every child uses."""

    models: tuple[Path, ...] = (SHIPPED_MODEL,)
    device: str = "cuda"
    backend: str = "inductor"
    repeats: int = 1
    service: ServiceSettings = dataclasses.field(default_factory=ServiceSettings)

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"--repeats must be ≥ 1, got {self.repeats}")
        if not self.models:
            raise ValueError("no --model to measure")
        missing = [str(m) for m in self.models if not (m / "model_index.json").is_file()]
        if missing:
            raise ValueError(f"--model must be a diffusers pipeline directory: {missing}")

    @property
    def warm_up(self) -> GenerationRequest:
        return default_warm_up(self.service)

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [str(m) for m in self.models],
            "device": self.device,
            "backend": self.backend,
            "repeats": self.repeats,
            "warm_up": dataclasses.asdict(self.warm_up),
            "attention": self.service.attention_kernel.value,
            "threads": self.service.worker_threads,
        }


def _tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def _child_command(
    model: Path, kind: RunKind, cache_dir: Path, settings: ReadySettings
) -> list[str]:
    request = settings.warm_up
    policy = CompilePolicy.OFF if kind is RunKind.EAGER else CompilePolicy.ON
    cache_flag = [] if kind is RunKind.EAGER else ["--cache-dir", str(cache_dir)]
    return [
        sys.executable, "-m", "benchmarks.ready_child",
        "--model", str(model),
        "--model-id", model_id_for(EngineKind.DIFFUSERS, str(model), None),
        "--device", settings.device,
        "--compile", policy.value,
        "--backend", settings.backend,
        *cache_flag,
        "--attention", settings.service.attention_kernel.value,
        "--threads", str(settings.service.worker_threads),
        "--width", str(request.width),
        "--height", str(request.height),
        "--frames", str(request.num_frames),
        "--guidance", str(request.guidance_scale),
    ]  # fmt: skip


def run_child(model: Path, kind: RunKind, cache_dir: Path, settings: ReadySettings) -> ReadyRun:
    """Start one child and wait for its line. The eager run's ``cache_dir`` holds only its
    Triton cache (the compiled runs' ``use_cache_dir`` places both)."""
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    if kind is RunKind.EAGER:
        env["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    command = _child_command(model, kind, cache_dir, settings)
    logger.info("%s: %s run", model.name, kind.value)
    # Its log goes to this process's stderr; stdout carries the one JSON line.
    done = subprocess.run(
        [*command, "--spawned-at", repr(time.time())],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{model.name} {kind.value} run exited {done.returncode}: {lines[-3:]}")
    files, size = _tree_size(cache_dir)
    return ReadyRun(model.name, kind, Phases.from_line(lines[-1]), str(cache_dir), files, size)


def measure_model(model: Path, settings: ReadySettings, root: Path) -> list[ReadyRun]:
    """Eager, cold, then ``settings.repeats`` warm runs of ``model``; caches under ``root``."""
    cache = root / model.name / "compile-cache"
    if cache.exists() and any(cache.iterdir()):
        raise ValueError(f"{cache} is not empty: the cold run needs an empty cache directory")
    runs = [run_child(model, RunKind.EAGER, root / model.name / "eager", settings)]
    runs.append(run_child(model, RunKind.COLD, cache, settings))
    runs.extend(run_child(model, RunKind.WARM, cache, settings) for _ in range(settings.repeats))
    return runs


def run_benchmark(settings: ReadySettings, cache_root: Path) -> list[ReadyRun]:
    """Every model's runs, their compile caches under ``cache_root``."""
    return [run for model in settings.models for run in measure_model(model, settings, cache_root)]


def _random_wan(name: str, root: Path) -> Path:
    from benchmarks.random_pipeline import write_random_wan

    arch = {a.name: a for a in WAN_ARCHITECTURES}[name]
    out = root / "random-models" / name
    logger.info("writing a random %s pipeline to %s", name, out)
    return write_random_wan(arch, out)


def _stop_on_sigterm(signum: int, frame: object) -> NoReturn:
    # SystemExit unwinds through subprocess.run, which kills the running child on its way out:
    # a `timeout` around this script must not leave a child compiling on the GPU.
    raise SystemExit(128 + signum)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ReadySettings()
    parser.add_argument(
        "--model",
        action="append",
        type=Path,
        default=None,
        help="diffusers pipeline directory, repeatable (default: the shipped "
        f"{SHIPPED_MODEL.relative_to(REPO)}, unless --random-wan is given)",
    )
    parser.add_argument(
        "--random-wan",
        action="append",
        choices=[a.name for a in WAN_ARCHITECTURES],
        default=[],
        help="a packed W4A4 pipeline of this Wan 2.1 size with random weights, written under "
        "--cache-root before the runs (benchmarks/random_pipeline.py); repeatable",
    )
    parser.add_argument("--device", default=defaults.device, help="'cuda', 'cuda:N' or 'cpu'")
    parser.add_argument(
        "--backend",
        default=defaults.backend,
        help="torch.compile backend of the compiled runs (aot_eager: no code generation)",
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="warm runs per model")
    parser.add_argument(
        "--cache-root",
        type=Path,
        default=None,
        help="where the runs' compile caches (and --random-wan models) stay "
        "(default: a temporary directory, removed)",
    )
    parser.add_argument("--benchmarks", default="BENCHMARKS.md", help="markdown file to append to")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    parser.add_argument("--commit", default=None, help="commit to record (default: git HEAD)")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.e2e_report import append_section
    from benchmarks.kernels import BENCHMARKS_HEADER, environment
    from benchmarks.ready_report import section_text, to_json
    from qvgen.provenance import git_commit

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ready_time")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with contextlib.ExitStack() as stack:
        root = args.cache_root or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        models = args.model or ([] if args.random_wan else [SHIPPED_MODEL])
        models += [_random_wan(name, root) for name in args.random_wan]
        settings = ReadySettings(
            models=tuple(models), device=args.device, backend=args.backend, repeats=args.repeats
        )
        runs = run_benchmark(settings, root)
    # After the runs: this process holds no CUDA context while they start.
    env = environment(args.commit or git_commit(), settings.device)
    section = section_text(runs, settings, env)
    print(section)
    append_section(Path(args.benchmarks), section, BENCHMARKS_HEADER)
    if args.json:
        payload = {"environment": env, "settings": settings.to_json(), "runs": to_json(runs)}
        Path(args.json).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
