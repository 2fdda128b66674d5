"""``qvgen serve api|worker|webhooks|all``.

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
from service.engine.types import CompilePolicy, GenerationRequest
from service.settings import ServiceSettings
from service.worker.engines import (
    EngineKind,
    EngineStart,
    build_engine,
    model_id_for,
    warm_up_request,
)

logger = logging.getLogger(__name__)

# What each of several API processes calls to build its app (from QVGEN_* variables).
API_FACTORY = "service.api.main:create_app"
# Seconds ``serve all`` waits for its workers to hand back their jobs before killing them.
WORKER_EXIT_GRACE_S = 15.0
# A worker whose result store fails its check exits with this (sysexits' EX_UNAVAILABLE).
EXIT_STORE_UNAVAILABLE = os.EX_UNAVAILABLE


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

    webhooks = serve.add_parser(
        "webhooks", help="the webhook deliverer (service.webhooks.deliverer explains why apart)"
    )
    webhooks.set_defaults(handler=run_webhooks)

    both = serve.add_parser("all", help="the API plus N worker processes (local use)")
    _add_engine_flags(both)
    both.add_argument("--workers", type=int, default=1)
    both.add_argument("--host", default="127.0.0.1")
    both.add_argument("--port", type=int, default=8000)
    both.set_defaults(handler=run_all)


def _survive_uvicorns_sigterm() -> None:
    """uvicorn handles SIGTERM (a graceful shutdown), then raises it again under the handler it
    found. With none of ours that is the default one, and the process dies with -15 instead of
    exiting 0 after its clean shutdown (and ``serve all`` before it stops its workers)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)


def run_api(args: argparse.Namespace, settings: ServiceSettings | None = None) -> int:
    _survive_uvicorns_sigterm()
    import uvicorn

    from service.api import http_guard
    from service.api.main import create_app

    settings = settings or ServiceSettings()
    # No `limit_concurrency`: uvicorn answers past it with a 503 and a close before reading the
    # request body, and closing a socket with unread bytes sends a reset that can destroy the
    # answer. The API caps requests itself (service/api/request_limits.py) and keeps the
    # connection. Several processes: uvicorn forks them, each building its app from the
    # environment. The protocol is httptools with a deadline and a size cap on request heads,
    # which uvicorn has neither of (service/api/http_guard.py); create_app sets them.
    app = create_app(settings) if settings.api_processes == 1 else API_FACTORY
    uvicorn.run(
        app,
        factory=settings.api_processes > 1,
        workers=settings.api_processes,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=getattr(args, "access_log", False),
        timeout_keep_alive=settings.http_keep_alive_s,
        http=http_guard.PROTOCOL,
    )
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from service.worker.runner import Worker
    from service.worker.threads import limit_torch_threads

    settings = ServiceSettings()
    if not store_usable(settings):
        return EXIT_STORE_UNAVAILABLE
    model_id = model_id_for(args.engine, args.model, args.model_id)
    if args.device == "cpu":  # before the engine's warm-up, which already computes
        limit_torch_threads(settings.worker_threads)
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
    # The job is handed back and the worker deregistered: all that is left is the interpreter's
    # teardown of torch and the pipeline, 2-3 s of garbage collection on a busy 2-core machine
    # that only delays whoever waits for this exit (`serve all`, `make run`, a container stop).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_webhooks(args: argparse.Namespace) -> int:
    from service.webhooks.deliverer import WebhookDeliverer

    # httpx logs every request at INFO, URL and all (a receiver's URL may carry a token); the
    # deliverer logs each outcome itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        deliverer = WebhookDeliverer(ServiceSettings())
    except ValueError as error:
        raise SystemExit(f"qvgen serve webhooks: {error}") from error
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: deliverer.request_stop())
    deliverer.run()
    return 0


def store_usable(settings: ServiceSettings) -> bool:
    """Check the result store before anything slow (a model load): a worker that cannot store
    its results must not take jobs. False after one error line naming the setting at fault."""
    from service.storage import StoreUnavailable, open_store

    try:
        open_store(settings).check()
    except StoreUnavailable as error:
        logger.error("refusing to start: %s", error)
        return False
    return True


def default_warm_up(settings: ServiceSettings) -> GenerationRequest:
    """A worker's warm-up: the size, frames and guidance a request that names none gets."""
    width, height = (int(v) for v in settings.default_size.split("x"))
    return warm_up_request(
        width, height, settings.default_num_frames, settings.default_guidance_scale
    )


def engine_start(args: argparse.Namespace, settings: ServiceSettings) -> EngineStart:
    """Compile choice (the flag over the setting), a warm-up at the default request size, and
    the model's cache defaults."""
    return EngineStart(
        compile=args.compile or settings.compile_transformer,
        compile_cache_dir=settings.compile_cache_dir,
        attention=settings.attention_kernel,
        warm_up=default_warm_up(settings),
        cache_defaults=settings.cache_defaults(),
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
    from service.worker.threads import thread_environment, threads_per_worker

    if args.workers < 1:
        raise SystemExit(f"--workers must be ≥ 1, got {args.workers}")
    model_id = model_id_for(args.engine, args.model, args.model_id)
    base = ServiceSettings(models=(model_id,))
    if not store_usable(base):
        return EXIT_STORE_UNAVAILABLE
    os.environ["QVGEN_MODELS"] = model_id  # for the API's own processes, if it runs several
    env = {**os.environ}
    if args.device == "cpu":
        env |= thread_environment(threads_per_worker(base.worker_threads, args.workers))
    commands = []
    for index in range(args.workers):
        port = base.worker_metrics_port + index if base.worker_metrics_port else 0
        worker_env = {**env, "QVGEN_WORKER_METRICS_PORT": str(port)}
        commands.append((worker_command(args, model_id), worker_env))
    if base.webhooks_enabled:
        commands.append(([sys.executable, "-m", "service.cli", "serve", "webhooks"], env))
    pool = WorkerPool(commands, exit_grace_s=WORKER_EXIT_GRACE_S + base.drain_timeout_s)
    pool.start()
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
