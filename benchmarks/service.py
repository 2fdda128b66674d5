"""``qvgen bench service``: the service's own overhead, with the no-op engine, on local Redis.

Three measurements, each against real processes (``qvgen serve api`` under uvicorn, ``qvgen
serve worker --engine noop``) and the Redis of ``QVGEN_REDIS_URL``, under a fresh key prefix
that is deleted afterwards:

1. submit: ``POST /v1/videos`` sent open-loop at ``--rate`` requests/s (a request's latency
   runs from its scheduled send time, so a stalled server cannot hide its queueing), no worker
   consuming; reports achieved throughput, p50 and p99.
2. enqueue→start: one idle worker; jobs submitted one at a time; latency = the job's
   ``started_at`` (written by the worker's START script) − ``created_at`` (written by the API).
3. kill trials: two workers; each trial SIGKILLs the worker running a job mid-way and starts a
   replacement; a trial is lost unless the job completes with exactly one result file.

Prints a table and appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from pydantic import SecretStr

from qvgen.cli import command_group
from qvgen.provenance import git_commit
from service.queue.keys import Keys
from service.settings import ServiceSettings
from service.worker.engines import EngineKind

logger = logging.getLogger(__name__)

SUBMIT_MODEL, RUN_MODEL = "bench-submit", "bench-noop"
MACHINE = "2-core CPU dev box"
_TINY_JOB = {"prompt": "bench", "size": "16x16", "num_frames": 1, "num_inference_steps": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="submissions per second")
    parser.add_argument("--requests", type=int, default=2000, help="submissions in phase 1")
    parser.add_argument("--starts", type=int, default=200, help="jobs timed in phase 2")
    parser.add_argument("--kill-trials", type=int, default=20)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--machine", default=MACHINE)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))


@dataclass(frozen=True)
class Figures:
    submit_rps: float
    submit_p50_ms: float
    submit_p99_ms: float
    submit_errors: int
    start_p50_ms: float
    start_p99_ms: float
    kill_trials: int
    kill_lost: int


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def settings_environment(settings: ServiceSettings) -> dict[str, str]:
    """``QVGEN_*`` variables that make a child process read back exactly ``settings``."""
    env = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue  # unset: the default (None) again
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, tuple):
            text = ",".join(v.get_secret_value() if isinstance(v, SecretStr) else v for v in value)
        elif isinstance(value, SecretStr):
            text = value.get_secret_value()
        else:
            text = str(value.value if isinstance(value, enum.Enum) else value)
        env[f"QVGEN_{name.upper()}"] = text
    return env


class Cluster:
    """The API and workers as child processes, all under one settings environment."""

    def __init__(self, settings: ServiceSettings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.env = {**os.environ, **settings_environment(settings)}
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _qvgen(self, *args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "service.cli", "--log-level", "WARNING", *args]
        return subprocess.Popen(command, env=self.env)

    def start_api(self, timeout_s: float = 120) -> None:
        """Starts ``qvgen serve api`` and waits for /healthz (imports take seconds on a busy
        machine, so the deadline is generous)."""
        self.api = self._qvgen("serve", "api", "--port", str(self.port))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited with {self.api.returncode} before it was up")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the API did not come up within {timeout_s} s")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_worker(
        self,
        step_delay_s: float = 0.0,
        *,
        model: str = RUN_MODEL,
        engine: EngineKind = EngineKind.NOOP,
        model_id: str = RUN_MODEL,
    ) -> subprocess.Popen[bytes]:
        worker = self._qvgen(
            "serve", "worker", "--engine", str(engine), "--model", model,
            "--model-id", model_id, "--step-delay", str(step_delay_s),
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, *([self.api] if self.api else [])]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


async def _submit_open_loop(
    base_url: str, rate: float, count: int
) -> tuple[list[float], int, float]:
    """Latencies (s) from each request's scheduled time, errors, achieved requests/s."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        body = {**_TINY_JOB, "model": SUBMIT_MODEL}
        for _ in range(20):  # warm the connection pool and the server's code paths
            await client.post("/v1/videos", json=body)
        start = time.perf_counter()

        async def one(index: int) -> None:
            nonlocal errors
            scheduled = start + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                response = await client.post("/v1/videos", json=body)
                errors += response.status_code != 200
            except httpx.HTTPError:
                errors += 1  # counted, and its latency (to the failure) kept
            latencies.append(time.perf_counter() - scheduled)

        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - start
    return latencies, errors, count / elapsed


def _wait_for_worker(client: redis.Redis, keys: Keys, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.zcard(keys.workers(RUN_MODEL)) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("no worker announced itself within 30 s")
        time.sleep(0.05)


def _wait_final(http: httpx.Client, job_id: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        video: dict[str, object] = http.get(f"/v1/videos/{job_id}").json()
        if video["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return video
        time.sleep(0.02)


def _enqueue_to_start(cluster: Cluster, client: redis.Redis, count: int) -> list[float]:
    keys = Keys(cluster.settings.key_prefix)
    cluster.start_worker(step_delay_s=0.0)
    _wait_for_worker(client, keys)
    latencies = []
    with httpx.Client(base_url=cluster.base_url, timeout=30) as http:
        for _ in range(count):
            job_id = http.post("/v1/videos", json={**_TINY_JOB, "model": RUN_MODEL}).json()["id"]
            _wait_final(http, job_id, timeout_s=30)
            created, started = client.hmget(keys.job(job_id), ["created_at", "started_at"])
            latencies.append((int(started) - int(created)) / 1000)  # type: ignore[arg-type]
    return latencies


def _kill_trials(cluster: Cluster, client: redis.Redis, trials: int) -> int:
    """Returns how many trials lost their job (not completed with exactly one result)."""
    keys = Keys(cluster.settings.key_prefix)
    step_delay, steps = 0.05, 30
    cluster.start_worker(step_delay)
    lost = 0
    job = {**_TINY_JOB, "model": RUN_MODEL, "num_inference_steps": steps}
    with httpx.Client(base_url=cluster.base_url, timeout=30) as http:
        for trial in range(trials):
            job_id = http.post("/v1/videos", json=job).json()["id"]
            deadline = time.monotonic() + 30
            while client.hget(keys.job(job_id), "steps_done") in (None, "0"):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            owner = client.hget(keys.job(job_id), "worker")
            info = client.get(keys.worker(str(owner)))
            pid = int(json.loads(str(info))["pid"]) if info else None
            victim = next((w for w in cluster.workers if w.pid == pid), None)
            if victim is not None:
                victim.kill()
                victim.wait()
                cluster.workers.remove(victim)
                cluster.start_worker(step_delay)
            video = _wait_final(http, job_id, timeout_s=60)
            results = cluster.settings.results_dir / job_id
            files = [p for p in results.glob("*.mp4") if not p.name.startswith(".")]
            ok = video["status"] == "completed" and len(files) == 1 and victim is not None
            logger.info("trial %d: %s attempt %s, %d files", trial, video["status"],
                        video.get("attempt"), len(files))  # fmt: skip
            lost += not ok
    return lost


def _cleanup(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


def _append(out: Path, machine: str, figures: Figures, rate: float) -> None:
    header = "| date | machine | commit | benchmark | figures |\n|---|---|---|---|---|\n"
    if not out.exists():
        out.write_text("# Benchmarks\n\n" + header)
    text = out.read_text()
    if "| benchmark |" not in text:
        text += "\n" + header
    row = (
        f"| {datetime.now(UTC).date()} | {machine} | {git_commit()} | service (noop engine) | "
        f"submit at {rate:.0f}/s: {figures.submit_rps:.0f} req/s achieved, "
        f"p50 {figures.submit_p50_ms:.1f} ms, p99 {figures.submit_p99_ms:.1f} ms, "
        f"{figures.submit_errors} errors; enqueue→start p50 {figures.start_p50_ms:.1f} ms, "
        f"p99 {figures.start_p99_ms:.1f} ms; kill trials: {figures.kill_lost} of "
        f"{figures.kill_trials} jobs lost |\n"
    )
    out.write_text(text.rstrip("\n") + "\n" + row)


def run_bench(args: argparse.Namespace) -> int:
    base = ServiceSettings()
    with tempfile.TemporaryDirectory(prefix="qvgen-bench-") as tmp:
        settings = ServiceSettings(
            redis_url=base.redis_url,
            key_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            models=(RUN_MODEL, SUBMIT_MODEL),
            max_queue_depth=1_000_000,
            claim_timeout_s=1.0,
            heartbeat_interval_s=0.25,
            results_dir=Path(tmp),
            worker_metrics_port=0,
        )
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        cluster = Cluster(settings, args.port)
        try:
            cluster.start_api()
            submit, errors, rps = asyncio.run(
                _submit_open_loop(cluster.base_url, args.rate, args.requests)
            )
            starts = _enqueue_to_start(cluster, client, args.starts)
            lost = _kill_trials(cluster, client, args.kill_trials) if args.kill_trials else 0
        finally:
            cluster.stop()
            _cleanup(client, settings.key_prefix)
    figures = Figures(
        submit_rps=rps,
        submit_p50_ms=1000 * statistics.median(submit),
        submit_p99_ms=1000 * _percentile(submit, 0.99),
        submit_errors=errors,
        start_p50_ms=1000 * statistics.median(starts),
        start_p99_ms=1000 * _percentile(starts, 0.99),
        kill_trials=args.kill_trials,
        kill_lost=lost,
    )
    print(f"{'measure':<32} {'value':>10}")
    for name, value in vars(figures).items():
        print(f"{name:<32} {value:>10.2f}")
    _append(args.out, args.machine, figures, args.rate)
    return 0


def register(subparsers: Any) -> None:
    bench = command_group(subparsers, "bench", "benchmarks that append to BENCHMARKS.md")
    service = bench.add_parser("service", help="submit and enqueue→start latency, kill trials")
    add_arguments(service)
    service.set_defaults(handler=run_bench)
