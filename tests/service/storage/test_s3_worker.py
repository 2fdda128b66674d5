"""Workers on the S3 store: retention deletes the objects, an upload failure never completes a
job, and a worker whose store is unusable refuses to start with one line naming the setting.

Worker loops run in threads of this process (``tests/service/worker/running.py``) against real
Redis and the moto server; the start-up refusal runs ``python -m service.cli serve worker``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from benchmarks.service import settings_environment
from service.cli import EXIT_STORE_UNAVAILABLE
from service.engine.types import GenerationRequest
from service.queue.keys import Keys
from service.queue.records import ErrorCode, JobField, JobStatus
from service.settings import ServiceSettings
from service.storage import open_store
from service.worker.noop_engine import NoopEngine
from service.worker.runner import Worker
from tests.service.queue.helpers import produce
from tests.service.redis_fixtures import RedisServer, free_port, redis_server
from tests.service.storage.s3_fixtures import S3Server, s3_server, s3_settings
from tests.service.worker.running import WAIT_S, Running

__all__ = ["redis_server", "s3_server"]

REQUEST = GenerationRequest(prompt="p", width=16, height=16, num_frames=3, num_inference_steps=2)
# Long enough to delete the bucket while it runs: 20 steps of 0.05 s.
LONG_REQUEST = GenerationRequest(
    prompt="p", width=16, height=16, num_frames=3, num_inference_steps=20
)
STEP_DELAY_S = 0.05


@pytest.fixture
def start_worker() -> Iterator[Callable[[ServiceSettings, float], Running]]:
    running: list[Running] = []

    def start(settings: ServiceSettings, step_delay_s: float = 0.0) -> Running:
        engine = NoopEngine("tiny", step_delay_s=step_delay_s)
        run = Running(Worker(engine, settings, "cpu", metrics_port=0))
        running.append(run)
        return run

    yield start
    for run in running:
        if run.thread.is_alive():
            run.stop()


def _submit(settings: ServiceSettings, request: GenerationRequest = REQUEST) -> str:
    return produce(settings, lambda q: q.submit("tiny", request, seconds="1")).job_id


def _wait(
    settings: ServiceSettings, job_id: str, done: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            fields: dict[str, str] = client.hgetall(Keys(settings.key_prefix).job(job_id))  # type: ignore[assignment]
            if done(fields) or time.monotonic() > deadline:
                return fields
            time.sleep(0.02)
    finally:
        client.close()


def _final(fields: dict[str, str]) -> bool:
    return bool(fields) and JobStatus(fields[JobField.STATUS]).final


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.05)


def test_retention_removes_the_record_and_the_objects(
    redis_server: RedisServer,
    s3_server: S3Server,
    tmp_path: Path,
    start_worker: Callable[[ServiceSettings, float], Running],
) -> None:
    bucket = s3_server.new_bucket()
    settings = s3_settings(redis_server.url, s3_server, bucket, tmp_path / "results", retention_s=1)
    start_worker(settings, 0.0)
    job_id = _submit(settings)
    fields = _wait(settings, job_id, _final)
    assert fields[JobField.STATUS] == "completed"
    job_keys = s3_server.keys(bucket, f"{settings.s3_key_prefix}{job_id}/")
    assert sorted(job_keys) == sorted(
        fields[name]
        for name in (JobField.VIDEO_PATH, JobField.THUMBNAIL_PATH, JobField.SPRITESHEET_PATH)
    )
    # The record expires after 1 s; the janitor (every second) then sweeps past its grace of two
    # claim timeouts.
    _wait_for(lambda: not s3_server.keys(bucket), "the objects are swept")
    assert _wait(settings, job_id, lambda f: not f) == {}
    assert not (tmp_path / "results").exists()


def test_an_upload_failure_mid_job_never_completes_it_and_the_job_runs_again(
    redis_server: RedisServer,
    s3_server: S3Server,
    tmp_path: Path,
    start_worker: Callable[[ServiceSettings, float], Running],
) -> None:
    bucket = s3_server.new_bucket()
    settings = s3_settings(
        redis_server.url, s3_server, bucket, tmp_path / "results", max_deliveries=10
    )
    run = start_worker(settings, STEP_DELAY_S)
    job_id = _submit(settings, LONG_REQUEST)
    _wait(settings, job_id, lambda f: int(f.get(JobField.STEPS_DONE) or 0) >= 1)
    s3_server.client().delete_bucket(Bucket=bucket)  # empty: nothing was uploaded yet
    _wait_for(lambda: run.sample("qvgen_worker_result_store_errors_total") >= 1, "an upload fails")
    failed = _wait(settings, job_id, lambda f: True)
    assert failed[JobField.STATUS] in ("in_progress", "queued"), failed
    assert not failed.get(JobField.VIDEO_PATH)
    s3_server.client().create_bucket(Bucket=bucket)
    done = _wait(settings, job_id, _final)
    assert done[JobField.STATUS] == "completed" and int(done[JobField.ATTEMPT]) >= 2, done
    store = open_store(settings)
    for name in (JobField.VIDEO_PATH, JobField.THUMBNAIL_PATH, JobField.SPRITESHEET_PATH):
        assert f"/attempt-{done[JobField.ATTEMPT]}." in done[name]
        assert store.stat(done[name]) is not None, f"completed without its {name}"
    assert run.thread.is_alive()


def test_a_store_that_stays_down_fails_the_job_after_its_deliveries_never_completes_it(
    redis_server: RedisServer,
    s3_server: S3Server,
    tmp_path: Path,
    start_worker: Callable[[ServiceSettings, float], Running],
) -> None:
    bucket = s3_server.new_bucket()
    settings = s3_settings(
        redis_server.url, s3_server, bucket, tmp_path / "results", max_deliveries=2
    )
    run = start_worker(settings, 0.0)
    s3_server.client().delete_bucket(Bucket=bucket)
    job_id = _submit(settings)
    done = _wait(settings, job_id, _final)
    assert (done[JobField.STATUS], done[JobField.ERROR_CODE]) == (
        "failed",
        ErrorCode.MAX_DELIVERIES.value,
    )
    assert run.sample("qvgen_worker_result_store_errors_total") == 2
    assert not done.get(JobField.VIDEO_PATH)


def _start_worker_process(settings: ServiceSettings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_environment(settings)}
    command = [sys.executable, "-m", "service.cli", "--log-level", "WARNING", "serve", "worker"]
    command += ["--engine", "noop", "--model", "tiny", "--model-id", "tiny"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("unreachable", "QVGEN_S3_ENDPOINT_URL=http://127.0.0.1:{port} is unreachable"),
        ("no bucket", "QVGEN_S3_BUCKET=qvgen-missing-bucket does not exist"),
    ],
)
def test_a_worker_refuses_to_start_on_an_unusable_store_with_one_line(
    fault: str, named: str, redis_server: RedisServer, s3_server: S3Server, tmp_path: Path
) -> None:
    port = free_port()
    overrides: dict[str, object] = (
        {"s3_endpoint_url": f"http://127.0.0.1:{port}"}
        if fault == "unreachable"
        else {"s3_bucket": "qvgen-missing-bucket"}
    )
    bucket = "qvgen-missing-bucket" if fault == "no bucket" else s3_server.new_bucket()
    settings = s3_settings(redis_server.url, s3_server, bucket, tmp_path / "results", **overrides)
    finished = _start_worker_process(settings)
    assert finished.returncode == EXIT_STORE_UNAVAILABLE, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, finished.stderr
    assert "refusing to start: result store" in lines[0]
    assert named.format(port=port) in lines[0]
