"""``python -m benchmarks.ready_child``: one worker start, timed; one JSON line on stdout.

Started in a fresh process by ``benchmarks.ready_time`` for each run, it does what a worker
does between its process starting and its saying ready (``service/cli.py`` ``run_worker``,
``service/worker/engines.py`` ``build_engine``), with a clock between the steps:

* start — from the parent's ``Popen`` (``--spawned-at``, wall clock) to this module's first
  line: the interpreter's own start;
* imports — torch and the engine's modules (diffusers, transformers), which ``build_engine``
  imports on its first call;
* load — ``load_diffusers_engine``: the pipeline read from disk onto the device, the
  transformer wrapped for ``torch.compile`` (which traces nothing yet);
* warm-up — ``warm_up_engine``: one generation of the worker's warm-up request, during which
  dynamo traces and the backend builds (or finds in the cache) the code;
* ready — the sum: spawn to ready.

Every phase is ``time.perf_counter`` from this process's start; the warm-up's generation hands
back numpy frames, so GPU work is complete when its clock stops. Not timed: the worker's result
store check (``store_usable``), which needs a service around it and no model.
"""

from __future__ import annotations

import time

STARTED_WALL = time.time()
STARTED = time.perf_counter()

import argparse  # noqa: E402  (the clocks first: everything after them is the child's time)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    # The choices are plain strings here: their enums live in modules whose import is timed.
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ready_child")
    parser.add_argument("--model", required=True, help="diffusers pipeline directory")
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--compile", required=True, help="a CompilePolicy value")
    parser.add_argument("--backend", required=True, help="torch.compile backend")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--attention", required=True, help="an AttentionKernel value")
    parser.add_argument("--threads", type=int, required=True, help="QVGEN_WORKER_THREADS")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--guidance", type=float, required=True)
    parser.add_argument("--spawned-at", type=float, required=True, help="time.time() at Popen")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    import torch

    # What build_engine imports at its first call, so that load times loading alone.
    import service.engine.diffusers_engine  # noqa: F401
    from service.engine.types import AttentionKernel, CompilePolicy
    from service.worker.engines import (
        EngineStart,
        load_diffusers_engine,
        warm_up_engine,
        warm_up_request,
    )
    from service.worker.threads import limit_torch_threads

    imported = time.perf_counter()
    if args.device == "cpu":  # as run_worker does before the engine exists
        limit_torch_threads(args.threads)
    start = EngineStart(
        compile=CompilePolicy(args.compile),
        compile_cache_dir=args.cache_dir,
        compile_backend=args.backend,
        attention=AttentionKernel(args.attention),
        warm_up=warm_up_request(args.width, args.height, args.frames, args.guidance),
    )
    engine = load_diffusers_engine(args.model, args.device, args.model_id, start)
    loaded = time.perf_counter()
    assert start.warm_up is not None
    warm_up_engine(engine, start.warm_up)
    ready = time.perf_counter()
    inductor = torch._dynamo.utils.counters["inductor"]
    interpreter_s = STARTED_WALL - args.spawned_at
    phases = {
        "start_s": interpreter_s,
        "imports_s": imported - STARTED,
        "load_s": loaded - imported,
        "warm_up_s": ready - loaded,
        "ready_s": interpreter_s + ready - STARTED,
        "compile_status": engine.compile_status.value,
        # Where inductor's code went (use_cache_dir sets it when the engine compiles).
        "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR"),
        "fx_graph_cache_hits": int(inductor["fxgraph_cache_hit"]),
        "fx_graph_cache_misses": int(inductor["fxgraph_cache_miss"]),
    }
    print(json.dumps(phases), flush=True)
    sys.stderr.flush()
    # The worker would now serve; the interpreter's teardown of torch is no part of a start.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
