"""``qvgen bench service``: the API's throughput and CPU cost, and the queue's latency and
durability, against real processes.

The processes are those of a deployment (``benchmarks.service_cluster``): ``qvgen serve api``
under uvicorn (``--api-processes`` of them), a noop worker, and a private ``redis-server`` with
the shipped ``service/queue/redis.conf`` (AOF everysec, noeviction), unless ``--redis-url`` names
another (then under a fresh key prefix, deleted afterwards). Requests carry an API key, as in
production. The load client (``benchmarks.http_client``, lean so that it takes little of the
CPU it measures) runs in this process, on the same machine.

Phases, each after a short unmeasured warm-up:

1. submit: ``POST /v1/videos`` open-loop at ``--submit-rate`` (``benchmarks.open_loop``: latency
   from each request's due time). Nobody consumes these jobs; the model's rules are published
   as a noop worker publishes them, so each submission is checked as against a served model.
2. poll: ``GET /v1/videos/{id}`` open-loop over the jobs of phase 1 (queued, so each answer
   counts the jobs ahead).
3. list: ``GET /v1/videos?limit=…`` open-loop, a page of the caller's jobs.
4. enqueue→start: jobs submitted one at a time to the idle worker; latency = the job's
   ``started_at`` (the worker's START script) − ``created_at`` (the API).
5. kill trials: the worker running a job is SIGKILLed mid-way and a replacement started; a trial
   is lost unless the job completes with exactly one result file.

Per phase 1-3: achieved rate, p50/p99/max latency, errors by status, and CPU ms per request of
the API (its process tree: uvicorn's worker processes included), of Redis (private server only)
and of the load client, from their CPU times before and after the phase; plus how many cores
the whole machine kept busy meanwhile and how many of those were other processes' (the machine
is shared), and the 1-minute load average. Prints a table, appends a section to
``--benchmarks`` and writes ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from benchmarks.http_client import Answer, HttpClient
from benchmarks.open_loop import OpenLoopResult, open_loop
from benchmarks.service_cluster import (
    RUN_MODEL,
    Cluster,
    free_port,
    private_redis,
    process_tree_cpu_s,
    settings_environment,
)
from qvgen.cli import command_group
from qvgen.provenance import git_commit
from service.queue.keys import Keys
from service.settings import ServiceSettings
from service.worker.noop_engine import NOOP_RULES

__all__ = ["Cluster", "settings_environment"]

logger = logging.getLogger(__name__)

SUBMIT_MODEL = "bench-submit"
MACHINE = "2-core CPU dev box"
BENCH_KEY = "bench-key"
WARMUP_REQUESTS = 50
_TINY_JOB = {"prompt": "bench", "size": "16x16", "num_frames": 1, "num_inference_steps": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-processes", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--submit-rate", type=float, default=200.0, help="POST /v1/videos per s")
    parser.add_argument("--submit-requests", type=int, default=2000)
    parser.add_argument("--poll-rate", type=float, default=200.0, help="GET /v1/videos/{id} per s")
    parser.add_argument("--poll-requests", type=int, default=2000)
    parser.add_argument("--list-rate", type=float, default=10.0, help="GET /v1/videos per s")
    parser.add_argument("--list-requests", type=int, default=100)
    parser.add_argument("--list-limit", type=int, default=100, help="the listing's page size")
    parser.add_argument("--connections", type=int, default=64, help="the client's pool")
    parser.add_argument("--starts", type=int, default=100, help="jobs timed in enqueue→start")
    parser.add_argument("--kill-trials", type=int, default=20)
    parser.add_argument(
        "--redis-url", default=None, help="an existing Redis (default: a private redis-server)"
    )
    parser.add_argument("--port", type=int, default=0, help="the API's port (0: a free one)")
    parser.add_argument("--machine", default=MACHINE)
    parser.add_argument("--note", default="", help="a remark for the section's heading")
    parser.add_argument("--benchmarks", default="BENCHMARKS.md", help="markdown file to append to")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    parser.add_argument("--commit", default=None, help="commit to record (default: git HEAD)")


# ---- CPU accounting -------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by each party, and by the whole machine (all cores)."""

    wall_s: float
    api_s: float
    redis_s: float
    client_s: float
    workers_s: float
    machine_busy_s: float
    load_1min: float


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(value for name, value in times._asdict().items() if not name.startswith("guest"))
    return float(total - idle)


def _client_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    def __init__(self, cluster: Cluster, redis_pid: int | None) -> None:
        self.cluster = cluster
        self.redis_pid = redis_pid

    def sample(self) -> CpuSample:
        assert self.cluster.api is not None
        return CpuSample(
            wall_s=time.perf_counter(),
            api_s=process_tree_cpu_s(self.cluster.api.pid),
            redis_s=process_tree_cpu_s(self.redis_pid) if self.redis_pid else 0.0,
            client_s=_client_s(),
            workers_s=sum(process_tree_cpu_s(w.pid) for w in self.cluster.workers),
            machine_busy_s=_machine_busy_s(),
            load_1min=os.getloadavg()[0],
        )


# ---- phases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseFigures:
    name: str
    target_rps: float
    sent: int
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    api_cpu_ms: float  # per request, all API processes together
    redis_cpu_ms: float | None  # per request; None with a Redis not started here
    client_cpu_ms: float  # per request, this process
    machine_busy_cores: float  # mean cores busy on the whole machine during the phase
    others_cores: float  # of those, processes not of this benchmark (the machine is shared)
    load_1min: float  # at the end of the phase

    @classmethod
    def of(
        cls, name: str, result: OpenLoopResult, before: CpuSample, after: CpuSample, redis: bool
    ) -> PhaseFigures:
        n = max(1, result.sent)
        wall = max(1e-9, after.wall_s - before.wall_s)
        busy = (after.machine_busy_s - before.machine_busy_s) / wall
        ours = sum(
            getattr(after, part) - getattr(before, part)
            for part in ("api_s", "redis_s", "client_s", "workers_s")
        )
        return cls(
            name=name,
            target_rps=result.rate,
            sent=result.sent,
            achieved_rps=result.achieved_rps,
            p50_ms=result.percentile_ms(0.50),
            p99_ms=result.percentile_ms(0.99),
            max_ms=result.percentile_ms(1.0),
            errors=result.errors,
            api_cpu_ms=1000 * (after.api_s - before.api_s) / n,
            redis_cpu_ms=1000 * (after.redis_s - before.redis_s) / n if redis else None,
            client_cpu_ms=1000 * (after.client_s - before.client_s) / n,
            machine_busy_cores=busy,
            others_cores=max(0.0, busy - ours / wall),
            load_1min=after.load_1min,
        )


@dataclass
class Figures:
    commit: str
    date: str
    machine: str
    cores: int
    api_processes: int
    load_before: tuple[float, float, float]
    phases: list[PhaseFigures] = field(default_factory=list)
    start_p50_ms: float | None = None
    start_p99_ms: float | None = None
    kill_trials: int = 0
    kill_lost: int = 0
    kill_lost_why: list[str] = field(default_factory=list)


async def _throughput_phases(
    cluster: Cluster, meter: CpuMeter, args: argparse.Namespace, private: bool
) -> list[PhaseFigures]:
    client = HttpClient(
        "127.0.0.1", cluster.port, args.connections, {"Authorization": f"Bearer {BENCH_KEY}"}
    )
    create = client.encode("POST", "/v1/videos", {**_TINY_JOB, "model": SUBMIT_MODEL})
    listing = client.encode("GET", f"/v1/videos?limit={args.list_limit}")
    polls: list[bytes] = []  # one ready request per job made

    async def submit(_: int) -> Answer:
        return await client.send(create)

    async def poll(index: int) -> Answer:
        return await client.send(polls[index % len(polls)])

    async def page(_: int) -> Answer:
        return await client.send(listing)

    def keep_job(answer: Answer) -> None:
        polls.append(client.encode("GET", f"/v1/videos/{answer.json()['id']}"))

    plan = [
        ("submit", submit, args.submit_rate, args.submit_requests, keep_job),
        ("poll", poll, args.poll_rate, args.poll_requests, None),
        ("list", page, args.list_rate, args.list_requests, None),
    ]
    phases = []
    try:
        for name, send, rate, count, on_answer in plan:
            if count <= 0 or (name == "poll" and not polls):
                continue
            for index in range(WARMUP_REQUESTS):  # connections, the server's code paths
                answer = await send(index)
                if on_answer is not None and answer.ok:
                    on_answer(answer)
            before = meter.sample()
            result = await open_loop(send, rate, count, on_answer)
            figures = PhaseFigures.of(name, result, before, meter.sample(), private)
            logger.info("%s: %s", name, figures)
            phases.append(figures)
    finally:
        client.close()
    return phases


def _wait_for_worker(client: redis.Redis, keys: Keys, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.zcard(keys.workers(RUN_MODEL)) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no worker announced itself within {timeout_s} s")
        time.sleep(0.05)


def _wait_final(http: httpx.Client, job_id: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        video: dict[str, object] = http.get(f"/v1/videos/{job_id}").json()
        if video["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return video
        time.sleep(0.02)


def _http(cluster: Cluster) -> httpx.Client:
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    return httpx.Client(base_url=cluster.base_url, timeout=30, headers=headers)


def _enqueue_to_start(cluster: Cluster, client: redis.Redis, count: int) -> list[float]:
    keys = Keys(cluster.settings.key_prefix)
    latencies = []
    with _http(cluster) as http:
        for _ in range(count):
            job_id = http.post("/v1/videos", json={**_TINY_JOB, "model": RUN_MODEL}).json()["id"]
            _wait_final(http, job_id, timeout_s=30)
            created, started = client.hmget(keys.job(job_id), ["created_at", "started_at"])
            latencies.append((int(started) - int(created)) / 1000)  # type: ignore[arg-type]
    return latencies


def _victim(
    cluster: Cluster, client: redis.Redis, keys: Keys, job_id: str
) -> subprocess.Popen[bytes] | None:
    """The worker process running ``job_id``, read from the job's owner and that worker's
    announcement. The announcement lives two claim timeouts; a worker that missed heartbeats
    on a loaded machine lets it lapse until its next one, so this looks again for a while."""
    deadline = time.monotonic() + 10
    while True:
        owner = client.hget(keys.job(job_id), "worker")
        info = client.get(keys.worker(str(owner))) if owner else None
        if info:
            pid = int(json.loads(str(info))["pid"])
            found = next((w for w in cluster.workers if w.pid == pid), None)
            if found is not None or time.monotonic() > deadline:
                return found
        elif time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _kill_trials(cluster: Cluster, client: redis.Redis, trials: int) -> list[str]:
    """Runs the trials; returns why each lost one was lost (empty: none lost). A trial is lost
    unless its worker was killed mid-job and the job still completed with exactly one result."""
    keys = Keys(cluster.settings.key_prefix)
    step_delay, steps = 0.05, 30
    cluster.start_worker(step_delay)
    lost: list[str] = []
    job = {**_TINY_JOB, "model": RUN_MODEL, "num_inference_steps": steps}
    with _http(cluster) as http:
        for trial in range(trials):
            job_id = http.post("/v1/videos", json=job).json()["id"]
            deadline = time.monotonic() + 30
            while client.hget(keys.job(job_id), "steps_done") in (None, "0"):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            victim = _victim(cluster, client, keys, job_id)
            if victim is not None:
                victim.kill()
                victim.wait()
                cluster.workers.remove(victim)
                cluster.start_worker(step_delay)
            video = _wait_final(http, job_id, timeout_s=60)
            results = cluster.settings.results_dir / job_id
            files = [p for p in results.glob("*.mp4") if not p.name.startswith(".")]
            logger.info("trial %d: %s attempt %s, %d files", trial, video["status"],
                        video.get("attempt"), len(files))  # fmt: skip
            if victim is None:
                lost.append(f"trial {trial}: no worker process found running {job_id}")
            elif video["status"] != "completed" or len(files) != 1:
                lost.append(
                    f"trial {trial}: {video['status']} (attempt {video.get('attempt')}) "
                    f"with {len(files)} result files"
                )
    return lost


def _cleanup(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


@contextlib.contextmanager
def _redis(args: argparse.Namespace, directory: Path) -> Iterator[tuple[str, int | None]]:
    if args.redis_url:
        yield args.redis_url, None
        return
    with private_redis(directory) as (url, pid):
        yield url, pid


# ---- report ---------------------------------------------------------------------------------


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{n}×{status}" for status, n in errors.items()) or "0"


def _optional_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(figures: Figures, note: str = "") -> str:
    """The section appended to BENCHMARKS.md."""
    load = ", ".join(f"{v:.2f}" for v in figures.load_before)
    lines = [
        f"## API throughput (`qvgen bench service`), {figures.machine}, {figures.date}, "
        f"commit {figures.commit}{f' ({note})' if note else ''}",
        "",
        f"{figures.api_processes} API process(es) beside the load client "
        "(`benchmarks/http_client.py`, one process, up to 64 keep-alive connections), a "
        "private Redis (shipped redis.conf) and an idle noop worker on "
        f"{figures.cores} cores; load average before the run {load}. Latency from each "
        "request's scheduled send time (open loop).",
        "",
        "| phase | target /s | sent | achieved /s | p50 ms | p99 ms | max ms | errors | "
        "API CPU ms/req | Redis CPU ms/req | client CPU ms/req | machine busy cores "
        "(others') | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in figures.phases:
        lines.append(
            f"| {p.name} | {p.target_rps:.0f} | {p.sent} | {p.achieved_rps:.1f} | "
            f"{p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.max_ms:.1f} | {_errors_text(p.errors)} | "
            f"{p.api_cpu_ms:.2f} | {_optional_ms(p.redis_cpu_ms)} | {p.client_cpu_ms:.2f} | "
            f"{p.machine_busy_cores:.2f} ({p.others_cores:.2f}) | {p.load_1min:.2f} |"
        )
    if figures.start_p50_ms is not None:
        lines += [
            "",
            f"Enqueue→start (idle noop worker): p50 {figures.start_p50_ms:.1f} ms, "
            f"p99 {figures.start_p99_ms:.1f} ms.",
        ]
    if figures.kill_trials:
        lines += [
            "",
            f"Kill trials: {figures.kill_lost} of {figures.kill_trials} jobs lost.",
            *(f"- {why}" for why in figures.kill_lost_why),
        ]
    return "\n".join(lines) + "\n"


def _print_table(figures: Figures) -> None:
    print(
        f"{'phase':<8} {'target':>7} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'API ms':>7} {'Redis ms':>8} {'client':>7} {'busy':>5} {'others':>6} errors"
    )
    for p in figures.phases:
        print(
            f"{p.name:<8} {p.target_rps:>7.0f} {p.achieved_rps:>9.1f} {p.p50_ms:>8.1f} "
            f"{p.p99_ms:>8.1f} {p.max_ms:>8.1f} {p.api_cpu_ms:>7.2f} "
            f"{_optional_ms(p.redis_cpu_ms):>8} {p.client_cpu_ms:>7.2f} "
            f"{p.machine_busy_cores:>5.2f} {p.others_cores:>6.2f} {_errors_text(p.errors)}"
        )
    if figures.start_p50_ms is not None:
        print(f"enqueue→start p50 {figures.start_p50_ms:.1f} ms, p99 {figures.start_p99_ms:.1f}")
    if figures.kill_trials:
        print(f"kill trials: {figures.kill_lost} of {figures.kill_trials} lost")
        for why in figures.kill_lost_why:
            print(f"  {why}")


def _append(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(text.rstrip("\n") + "\n\n" + section)


# ---- the command ----------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    figures = Figures(
        commit=args.commit or git_commit(),
        date=str(datetime.now(UTC).date()),
        machine=args.machine,
        cores=os.cpu_count() or 0,
        api_processes=args.api_processes,
        load_before=os.getloadavg(),
    )
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="qvgen-bench-"))
        url, redis_pid = stack.enter_context(_redis(args, Path(tmp)))
        settings = ServiceSettings(
            redis_url=url,
            key_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            models=(RUN_MODEL, SUBMIT_MODEL),
            api_keys=(BENCH_KEY,),  # type: ignore[arg-type]  # pydantic makes the SecretStr
            api_processes=args.api_processes,
            max_queue_depth=1_000_000,
            claim_timeout_s=1.0,
            heartbeat_interval_s=0.25,
            # A claim timeout this short (quick kill trials) also reclaims a job from a worker
            # that only stalled for a second on a loaded machine, and each reclaim is one more
            # delivery: the default 3 would fail a job that was never lost.
            max_deliveries=10,
            results_dir=Path(tmp) / "results",
            worker_metrics_port=0,
        )
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        keys = Keys(settings.key_prefix)
        # What a noop worker of the submit model would publish (none runs: nothing consumes).
        client.set(keys.rules(SUBMIT_MODEL), json.dumps(NOOP_RULES.to_dict()))
        cluster = Cluster(settings, args.port or free_port())
        try:
            cluster.start_api()
            cluster.start_worker()
            _wait_for_worker(client, keys)
            meter = CpuMeter(cluster, redis_pid)
            figures.phases = asyncio.run(
                _throughput_phases(cluster, meter, args, private=redis_pid is not None)
            )
            if args.starts:
                starts = _enqueue_to_start(cluster, client, args.starts)
                figures.start_p50_ms = 1000 * statistics.median(starts)
                figures.start_p99_ms = 1000 * sorted(starts)[int(0.99 * (len(starts) - 1))]
            if args.kill_trials:
                figures.kill_trials = args.kill_trials
                figures.kill_lost_why = _kill_trials(cluster, client, args.kill_trials)
                figures.kill_lost = len(figures.kill_lost_why)
        finally:
            cluster.stop()
            if redis_pid is None:
                _cleanup(client, settings.key_prefix)
            client.close()
    _print_table(figures)
    _append(Path(args.benchmarks), markdown(figures, args.note))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(figures), indent=1), encoding="utf-8")
    return 0


def register(subparsers: Any) -> None:
    bench = command_group(subparsers, "bench", "benchmarks that append to BENCHMARKS.md")
    service = bench.add_parser(
        "service", help="API throughput and CPU per request, enqueue→start latency, kill trials"
    )
    add_arguments(service)
    service.set_defaults(handler=run_bench)
