"""Chaos: workers SIGKILLed and SIGSTOPped mid-job, Redis killed and restarted from its AOF.

Real processes throughout (uvicorn API, worker processes, redis-server); the claim timeout is
1 s so that a silent worker loses its job within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
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
from tests.service.redis_fixtures import free_port, make_settings, redis_server, running_redis

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
    running, settings = cluster
    for _ in range(2):
        running.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)
    wait_ready(running, workers=2)
    video_id = _submit(running)
    kill_at = random.Random().randint(1, 30)
    assert not is_final(wait_video(running, video_id, _steps_at_least(kill_at)))
    killed, info = _owner(settings, video_id)
    os.kill(int(info["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    done = wait_video(running, video_id, is_final)
    assert done["status"] == "completed", (kill_at, done)
    assert done["attempt"] == 2
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert client.hget(Keys(settings.key_prefix).job(video_id), JobField.WORKER) != killed
    assert [p.name for p in result_files(settings, video_id)] == ["attempt-2.mp4"]


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


def wait_metric(port: int, name: str, timeout_s: float = 10) -> float:
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text.splitlines():
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
    with running_redis(
        tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always"
    ) as server:
        running, settings = start_cluster(server.url, tmp_path / "results")
        try:
            for _ in range(2):
                running.start_worker(0.02, model=MODEL, model_id=MODEL)
            wait_ready(running, workers=2)
            body = {**LONG_JOB, "num_inference_steps": 10}
            accepted = [_submit(running, body) for _ in range(12)]
            wait_video(running, accepted[0], _steps_at_least(2))
            server.kill()  # SIGKILL: no shutdown save; only the AOF remains
            server.start()  # same port, same directory
            finals = [
                wait_video(running, video_id, is_final, timeout_s=90) for video_id in accepted
            ]
            assert [v["status"] for v in finals] == ["completed"] * len(accepted), finals
            for video_id in accepted:
                assert len(result_files(settings, video_id)) == 1
        finally:
            running.stop()


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


def test_serve_all_restarts_a_dead_worker_and_exits_0_on_sigterm(
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
