"""``qvgen serve api|worker|all``.

Settings come from ``QVGEN_*`` environment variables (``service.settings.ServiceSettings``);
the flags here only say what to run where.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from qvgen.cli import command_group
from service.engine.types import CompilePolicy
from service.settings import ServiceSettings
from service.worker.engines import (
    EngineKind,
    EngineStart,
    build_engine,
    model_id_for,
    warm_up_request,
)

logger = logging.getLogger(__name__)

# Seconds ``serve all`` waits for its workers to hand back their jobs before killing them.
WORKER_EXIT_GRACE_S = 15.0


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="diffusers pipeline directory (--engine diffusers) or a model name (--engine noop)",
    )
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument(
        "--engine", type=EngineKind, choices=list(EngineKind), default=EngineKind.DIFFUSERS
    )
    parser.add_argument("--model-id", default=None, help="id clients pass (default: dir name)")
    parser.add_argument(
        "--step-delay", type=float, default=0.0, help="seconds per step of the noop engine"
    )
    parser.add_argument(
        "--compile",
        type=CompilePolicy,
        choices=list(CompilePolicy),
        default=None,
        help="torch.compile the transformer (auto: on CUDA); default: QVGEN_COMPILE_TRANSFORMER",
    )


def register(subparsers: Any) -> None:
    serve = command_group(subparsers, "serve", "run the video-generation service")
    api = serve.add_parser("api", help="the HTTP API (FastAPI under uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--access-log", action="store_true", help="log every request line")
    api.set_defaults(handler=run_api)

    worker = serve.add_parser("worker", help="one worker: loads the model once, runs jobs")
    _add_engine_flags(worker)
    worker.add_argument("--metrics-port", type=int, default=None, help="default: settings")
    worker.set_defaults(handler=run_worker)

    both = serve.add_parser("all", help="the API plus N worker processes (local use)")
    _add_engine_flags(both)
    both.add_argument("--workers", type=int, default=1)
    both.add_argument("--host", default="127.0.0.1")
    both.add_argument("--port", type=int, default=8000)
    both.set_defaults(handler=run_all)


def run_api(args: argparse.Namespace, settings: ServiceSettings | None = None) -> int:
    import uvicorn

    from service.api.main import create_app

    app = create_app(settings or ServiceSettings())
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=getattr(args, "access_log", False),
    )
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from service.worker.runner import Worker

    settings = ServiceSettings()
    model_id = model_id_for(args.engine, args.model, args.model_id)
    engine = build_engine(
        args.engine,
        args.model,
        args.device,
        model_id,
        args.step_delay,
        engine_start(args, settings),
    )
    worker = Worker(engine, settings, args.device, metrics_port=args.metrics_port)
    worker.install_signal_handlers()
    worker.run()
    return 0


def engine_start(args: argparse.Namespace, settings: ServiceSettings) -> EngineStart:
    """Compile choice (the flag over the setting) and a warm-up at the default request size."""
    width, height = (int(v) for v in settings.default_size.split("x"))
    return EngineStart(
        compile=args.compile or settings.compile_transformer,
        compile_cache_dir=settings.compile_cache_dir,
        attention=settings.attention_kernel,
        warm_up=warm_up_request(
            width, height, settings.default_num_frames, settings.default_guidance_scale
        ),
    )


def worker_command(args: argparse.Namespace, model_id: str) -> list[str]:
    compile_flag = [] if args.compile is None else ["--compile", str(args.compile)]
    return [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "worker",
        "--model",
        args.model,
        "--device",
        args.device,
        "--engine",
        str(args.engine),
        "--model-id",
        model_id,
        "--step-delay",
        str(args.step_delay),
        *compile_flag,
    ]


def run_all(args: argparse.Namespace) -> int:
    from service.worker.supervisor import WorkerPool

    if args.workers < 1:
        raise SystemExit(f"--workers must be ≥ 1, got {args.workers}")
    model_id = model_id_for(args.engine, args.model, args.model_id)
    base = ServiceSettings(models=(model_id,))
    env = {**os.environ, "QVGEN_MODELS": model_id}
    commands = []
    for index in range(args.workers):
        port = base.worker_metrics_port + index if base.worker_metrics_port else 0
        worker_env = {**env, "QVGEN_WORKER_METRICS_PORT": str(port)}
        commands.append((worker_command(args, model_id), worker_env))
    pool = WorkerPool(commands, exit_grace_s=WORKER_EXIT_GRACE_S + base.drain_timeout_s)
    pool.start()
    # uvicorn re-raises the SIGTERM it handled once it has shut down; without a handler of our
    # own that would kill this process before it stops its workers.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    logger.info(
        "started %d workers for %r; API on %s:%d", args.workers, model_id, args.host, args.port
    )
    try:
        return run_api(args, base)
    finally:
        pool.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m service.cli …``: the same commands without importing the rest of ``qvgen``
    (whose engine imports take seconds): how ``serve all`` and the bench start workers."""
    parser = argparse.ArgumentParser(prog="python -m service.cli")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
