"""Chaos: workers SIGKILLed and SIGSTOPped mid-job, Redis killed and restarted from its AOF.

Real processes throughout (uvicorn API, worker processes, redis-server); the claim timeout is
1 s so that a silent worker loses its job within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from benchmarks.service import Cluster
from service.queue.keys import Keys
from service.queue.records import JobField
from service.settings import ServiceSettings
from tests.service.cluster_fixtures import (
    MODEL,
    auth,
    cluster,
    is_final,
    result_files,
    start_cluster,
    wait_ready,
    wait_video,
)
from tests.service.redis_fixtures import (
    RedisServer,
    free_port,
    make_settings,
    redis_server,
    running_redis,
)

__all__ = ["cluster", "redis_server"]

STEP_DELAY_S = 0.05
LONG_JOB = {"prompt": "chaos", "size": "16x16", "num_frames": 1, "num_inference_steps": 60}


def _submit(running: Cluster, body: dict[str, object] = LONG_JOB) -> str:
    response = httpx.post(f"{running.base_url}/v1/videos", json=body, headers=auth(), timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _owner(settings: ServiceSettings, video_id: str) -> tuple[str, dict[str, object]]:
    """The worker name running ``video_id`` and its announced info (pid, metrics port)."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = Keys(settings.key_prefix)
    name = str(client.hget(keys.job(video_id), JobField.WORKER))
    info = json.loads(str(client.get(keys.worker(name))))
    client.close()
    return name, info


def _steps_at_least(count: int):  # type: ignore[no-untyped-def]
    return lambda video: int(video.get("steps_done", 0)) >= count or is_final(video)


def test_sigkill_mid_job_peer_finishes_with_attempt_two(
    cluster: tuple[Cluster, ServiceSettings],
) -> None:
    """Two trials, each killing the worker of a job at a random step; a replacement worker
    joins after each kill."""
    running, settings = cluster
    for _ in range(2):
        running.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    rng = random.Random()
    for trial in range(2):
        wait_ready(running, workers=2)
        video_id = _submit(running)
        kill_at = rng.randint(1, 30)
        assert not is_final(wait_video(running, video_id, _steps_at_least(kill_at)))
        killed, info = _owner(settings, video_id)
        os.kill(int(info["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        running.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)
        done = wait_video(running, video_id, is_final)
        assert (done["status"], done["attempt"]) == ("completed", 2), (trial, kill_at, done)
        assert client.hget(Keys(settings.key_prefix).job(video_id), JobField.WORKER) != killed
        assert [p.name for p in result_files(settings, video_id)] == ["attempt-2.mp4"]
        # The dead worker's registration lapses, so readiness counts only the living.
        client.zrem(Keys(settings.key_prefix).workers(MODEL), killed)


def test_sigstop_past_claim_timeout_then_sigcont_has_its_writes_refused(
    cluster: tuple[Cluster, ServiceSettings],
) -> None:
    running, settings = cluster
    for _ in range(2):
        running.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)
    wait_ready(running, workers=2)
    video_id = _submit(running)
    wait_video(running, video_id, _steps_at_least(3))
    frozen, info = _owner(settings, video_id)
    pid = int(info["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGSTOP)
    try:
        taken = wait_video(running, video_id, lambda v: v["attempt"] == 2 or is_final(v))
        assert taken["attempt"] == 2 and taken["status"] == "in_progress"
    finally:
        os.kill(pid, signal.SIGCONT)
    done = wait_video(running, video_id, is_final)
    assert (done["status"], done["attempt"]) == ("completed", 2)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert client.hget(Keys(settings.key_prefix).job(video_id), JobField.WORKER) != frozen
    assert [p.name for p in result_files(settings, video_id)] == ["attempt-2.mp4"]
    # The thawed worker noticed at its first heartbeat or step that the job was not its own.
    port = int(info["port"])  # type: ignore[call-overload]
    refused = wait_metric(port, "qvgen_worker_fenced_writes_total")
    assert refused >= 1


def wait_metric(port: int, name: str, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + "{"):
                value = float(line.rsplit(" ", 1)[1])
        if value:
            return value
        time.sleep(0.1)
    return value


@pytest.mark.slow
def test_redis_killed_and_restarted_from_aof_every_accepted_job_finishes(
    tmp_path: Path,
) -> None:
    """With the shipped durability (AOF, appendfsync everysec: service/queue/redis.conf), a
    Redis SIGKILLed more than a second after a job was accepted still has it. Jobs may run again
    (a start or a finish of the last second is lost), but each completes with its video."""
    with running_redis(
        tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "everysec"
    ) as server:
        running, settings = start_cluster(server.url, tmp_path / "results")
        try:
            for _ in range(2):
                running.start_worker(0.02, model=MODEL, model_id=MODEL)
            wait_ready(running, workers=2)
            body = {**LONG_JOB, "num_inference_steps": 10}
            accepted = [_submit(running, body) for _ in range(12)]
            wait_video(running, accepted[0], _steps_at_least(2))
            time.sleep(1.5)  # past everysec's fsync of the last acknowledged submission
            server.kill()  # SIGKILL: no shutdown save; only the AOF remains
            server.start()  # same port, same directory
            finals = [
                wait_video(running, video_id, is_final, timeout_s=180) for video_id in accepted
            ]
            assert [v["status"] for v in finals] == ["completed"] * len(accepted), finals
            client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
            for video_id in accepted:
                stored = client.hget(Keys(settings.key_prefix).job(video_id), JobField.VIDEO_PATH)
                assert stored and Path(stored).is_file(), video_id
        finally:
            running.stop()


def test_redis_full_through_http_answers_503_never_500_nor_a_reset(tmp_path: Path) -> None:
    """A flood against a Redis at maxmemory (noeviction, AOF everysec): every answer is 200 or
    503 store_full with Retry-After; no 500, no connection reset."""
    with running_redis(
        tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "everysec"
    ) as server:
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        running, settings = start_cluster(server.url, tmp_path / "results")
        try:
            # The flood's Redis connections (some 25 KB of server memory each) are opened first,
            # so that the headroom below is for jobs: a fast API opens dozens at once, which
            # alone filled it before any job was written.
            asyncio.run(_open_connections(running.base_url, 400, 50))
            admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 600_000)
            statuses, errors, full = asyncio.run(_flood_full(running.base_url, 400, 50))
            assert errors == 0 and set(statuses) == {200, 503}, (statuses, errors)
            assert full == statuses[503]
            keys = Keys(settings.key_prefix)
            assert admin.zcard(keys.jobs) == statuses[200] == admin.xlen(keys.stream(MODEL))
        finally:
            running.stop()
            admin.close()


async def _open_connections(base_url: str, requests: int, concurrency: int) -> None:
    """Polls of an unknown job (404), ``concurrency`` at a time: each one a Redis call."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    unknown = "/v1/videos/video_" + "0" * 32
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                assert (await client.get(unknown, headers=auth())).status_code == 404

        await asyncio.gather(*(one() for _ in range(requests)))


async def _flood_full(
    base_url: str, requests: int, concurrency: int
) -> tuple[Counter[int], int, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    body = {"prompt": "full " * 700, "size": "16x16", "num_frames": 1}
    statuses: Counter[int] = Counter()
    errors = full = 0
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def one() -> None:
            nonlocal errors, full
            async with gate:
                try:
                    response = await client.post("/v1/videos", json=body, headers=auth())
                except httpx.HTTPError:
                    errors += 1
                    return
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    full += response.json()["error"]["code"] == "store_full" and bool(
                        response.headers.get("retry-after")
                    )

        await asyncio.gather(*(one() for _ in range(requests)))
    return statuses, errors, full


def _announced_pids(client: redis.Redis, keys: Keys) -> set[int]:
    pids = set()
    for key in client.scan_iter(match=keys.worker("*")):
        info = client.get(key)
        if info:
            pids.add(int(json.loads(str(info))["pid"]))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_serve_all_splits_the_cores_restarts_a_dead_worker_and_exits_0_on_sigterm(
    redis_server: object, tmp_path: Path
) -> None:
    settings = make_settings(redis_server.url, tmp_path / "results", models=(MODEL,))  # type: ignore[attr-defined]
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "--log-level", "WARNING", "serve", "all",
               "--engine", "noop", "--model", MODEL, "--workers", "2", "--port", str(port)]  # fmt: skip
    serve_all = subprocess.Popen(command, env=Cluster(settings, port).env)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = Keys(settings.key_prefix)
    try:
        deadline = time.monotonic() + 60
        while len(first := _announced_pids(client, keys)) < 2:
            assert time.monotonic() < deadline and serve_all.poll() is None
            time.sleep(0.1)
        # Two CPU workers split the cores between them.
        threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
        for pid in first:
            environ = dict(
                item.split("=", 1)
                for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
                if "=" in item
            )
            assert environ["QVGEN_WORKER_THREADS"] == environ["OMP_NUM_THREADS"] == threads
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (_announced_pids(client, keys) - first):
            assert time.monotonic() < deadline, "the dead worker was not restarted"
            time.sleep(0.1)
        survivors = (_announced_pids(client, keys) | first) - {victim}
        serve_all.send_signal(signal.SIGTERM)
        assert serve_all.wait(timeout=30) == 0
        assert not [pid for pid in survivors if _alive(pid)]
    finally:
        if serve_all.poll() is None:
            serve_all.kill()
        client.close()


async def _flood(base_url: str, requests: int, concurrency: int) -> Counter[int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    body = {"prompt": "flood", "size": "16x16", "num_frames": 1, "num_inference_steps": 1}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def one() -> int:
            async with gate:
                response = await client.post("/v1/videos", json=body, headers=auth())
                return response.status_code

        return Counter(await asyncio.gather(*(one() for _ in range(requests))))


def test_a_flood_past_the_redis_pool_waits_for_connections_instead_of_503(
    cluster: tuple[Cluster, ServiceSettings],
) -> None:
    """150 requests in flight on one API process, more than its Redis connections (64): the
    ones without a connection wait for one; none is refused while Redis is healthy."""
    running, settings = cluster
    statuses = asyncio.run(_flood(running.base_url, 300, 150))
    assert statuses == Counter({200: 300}), statuses
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert client.xlen(Keys(settings.key_prefix).stream(MODEL)) == 300


async def _submit_through_a_freeze(
    base_url: str, server: RedisServer, count: int, every_s: float, frozen: tuple[float, float]
) -> list[httpx.Response]:
    """``count`` submissions, one every ``every_s``; Redis frozen from ``frozen[0]`` s to
    ``frozen[1]`` s after the first."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    body = {"prompt": "frozen", "size": "16x16", "num_frames": 1, "num_inference_steps": 1}
    loop = asyncio.get_running_loop()
    loop.call_later(frozen[0], server.freeze)
    loop.call_later(frozen[1], server.thaw)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def one(index: int) -> httpx.Response:
            await asyncio.sleep(index * every_s)
            return await client.post("/v1/videos", json=body, headers=auth())

        responses = list(await asyncio.gather(*(one(i) for i in range(count))))
    await asyncio.sleep(max(0.0, frozen[1] - loop.time()))
    return responses


def test_a_submit_answer_says_truly_whether_the_job_exists_when_redis_freezes(
    tmp_path: Path,
) -> None:
    """Redis stops answering (SIGSTOP) for 0.7 s while submissions stream in, past the API's
    0.3 s command timeout. Every 200 names a job that exists, every 503 job_not_created one
    that never will; a job may exist behind a 503 only where the answer says so
    (job_state_unknown). Two freezes."""
    with running_redis(
        tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "everysec"
    ) as server:
        running, settings = start_cluster(
            server.url, tmp_path / "results", redis_socket_timeout_s=0.3
        )
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        keys = Keys(settings.key_prefix)
        codes: Counter[int | str] = Counter()
        try:
            for _ in range(2):
                responses = asyncio.run(
                    _submit_through_a_freeze(running.base_url, server, 100, 0.01, (0.3, 1.0))
                )
                time.sleep(0.3)  # whatever reached Redis before or during the freeze has run
                round_codes = Counter(
                    r.status_code if r.status_code == 200 else r.json()["error"]["code"]
                    for r in responses
                )
                codes += round_codes
                for response in responses:
                    if response.status_code == 200:
                        assert client.exists(keys.job(response.json()["id"]))
                    elif response.json()["error"]["code"] == "job_not_created":
                        (job_id,) = re.findall(r"video_[0-9a-f]{32}", response.text)
                        assert not client.exists(keys.job(job_id))
                created = client.zcard(keys.jobs)
                accepted = round_codes[200]
                assert accepted <= created <= accepted + round_codes["job_state_unknown"], codes
                client.delete(keys.jobs)
        finally:
            running.stop()
            client.close()
        assert set(codes) <= {200, "job_not_created", "job_state_unknown", "store_unavailable"}
        assert codes["job_not_created"] + codes["store_unavailable"] > 0, codes


@pytest.mark.parametrize("processes", [1, 2])
def test_serve_api_serves_from_each_process_and_exits_0_on_sigterm(
    redis_server: object, tmp_path: Path, processes: int
) -> None:
    running, _ = start_cluster(
        redis_server.url,  # type: ignore[attr-defined]
        tmp_path / "results",
        api_processes=processes,
    )
    assert running.api is not None
    ids = [_submit(running) for _ in range(10)]  # spread over the processes by the kernel
    for video_id in ids:
        response = httpx.get(f"{running.base_url}/v1/videos/{video_id}", headers=auth())
        assert response.status_code == 200
    running.api.send_signal(signal.SIGTERM)
    assert running.api.wait(timeout=30) == 0
