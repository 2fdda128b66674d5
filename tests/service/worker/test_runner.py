"""The worker loop in a thread of this process, with the no-op engine, on a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from qvgen.video_io import probe_video
from service.engine.types import GenerationRequest
from service.queue.keys import Keys
from service.queue.records import JobField, JobStatus
from service.settings import ServiceSettings
from service.worker.noop_engine import NoopEngine
from service.worker.runner import Worker
from service.worker.threads import available_cores, limit_torch_threads, threads_per_worker
from tests.service.queue.helpers import produce
from tests.service.worker.running import WAIT_S, Running

REQUEST = GenerationRequest(prompt="p", width=16, height=16, num_frames=3, num_inference_steps=4)


@pytest.fixture
def start_worker(settings: ServiceSettings) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(step_delay_s: float = 0.0, name: str | None = None, **overrides: object) -> Running:
        chosen = settings.model_copy(update=overrides) if overrides else settings
        engine = NoopEngine("tiny", step_delay_s=step_delay_s)
        run = Running(Worker(engine, chosen, "cpu", name=name, metrics_port=0))
        running.append(run)
        return run

    yield start
    for run in running:
        if run.thread.is_alive():
            run.stop()


def _submit(settings: ServiceSettings, request: GenerationRequest = REQUEST) -> str:
    submitted = produce(settings, lambda q: q.submit("tiny", request, seconds="1"))
    return submitted.job_id


def _wait(
    settings: ServiceSettings, job_id: str, done: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    deadline = time.monotonic() + WAIT_S
    while True:
        fields = client.hgetall(Keys(settings.key_prefix).job(job_id))
        if done(fields) or time.monotonic() > deadline:
            client.close()
            return fields  # type: ignore[return-value]
        time.sleep(0.02)


def _final(fields: dict[str, str]) -> bool:
    return JobStatus(fields[JobField.STATUS]).final


def test_worker_runs_a_job_to_an_mp4_and_exports_metrics(
    settings: ServiceSettings, start_worker: Callable[..., Running]
) -> None:
    run = start_worker()
    job_id = _submit(settings)
    fields = _wait(settings, job_id, _final)
    assert fields[JobField.STATUS] == "completed" and fields[JobField.STEPS_DONE] == "4"
    assert fields[JobField.VIDEO_PATH].endswith(f"{job_id}/attempt-1.mp4")
    info = probe_video(fields[JobField.VIDEO_PATH])
    assert (info.frame_count, info.width, info.height) == (3, 16, 16)
    # 4 steps with guidance (5.0): two passes a step; the no-op engine saves none.
    passes = (fields[JobField.TRANSFORMER_PASSES], fields[JobField.TRANSFORMER_PASSES_SAVED])
    assert passes == ("8", "0")
    metrics = httpx.get(f"http://127.0.0.1:{run.worker.metrics_port}/metrics").text
    assert 'qvgen_jobs_finished_total{code="none",model="tiny",status="completed"} 1.0' in metrics
    assert 'qvgen_transformer_passes_total{model="tiny"} 8.0' in metrics
    assert 'qvgen_transformer_passes_saved_total{model="tiny"} 0.0' in metrics
    assert 'qvgen_step_duration_seconds_count{model="tiny"} 4.0' in metrics
    assert "qvgen_job_queue_wait_seconds_bucket" in metrics
    run.stop()


def test_a_request_the_engine_refuses_fails_once_without_retry(
    settings: ServiceSettings, start_worker: Callable[..., Running]
) -> None:
    # The API refuses such a request (tests/service/api/test_validation.py); it reaches a worker
    # only when the worker's rules differ from those the API checked. The worker's one check
    # fails it for good.
    start_worker()
    bad = GenerationRequest(prompt="p", width=1000, height=16, num_frames=1, num_inference_steps=1)
    fields = _wait(settings, _submit(settings, bad), _final)
    assert (fields[JobField.STATUS], fields[JobField.ERROR_CODE], fields[JobField.ATTEMPT]) == (
        "failed",
        "invalid_request",
        "1",
    )
    assert "width" in fields[JobField.ERROR_MESSAGE] and "512" in fields[JobField.ERROR_MESSAGE]


def test_delete_stops_the_engine_and_the_worker_goes_on(
    settings: ServiceSettings, start_worker: Callable[..., Running]
) -> None:
    run = start_worker(step_delay_s=0.05)
    long = GenerationRequest(prompt="p", width=16, height=16, num_frames=1, num_inference_steps=200)
    job_id = _submit(settings, long)
    _wait(settings, job_id, lambda f: int(f.get(JobField.STEPS_DONE, "0")) >= 2)

    async def delete(queue):  # type: ignore[no-untyped-def]
        return await queue.delete(await queue.get(job_id))

    assert produce(settings, delete).was_active
    deadline = time.monotonic() + WAIT_S
    while not run.sample("qvgen_worker_fenced_writes_total"):  # the engine gave up the job
        assert time.monotonic() < deadline, "the worker never noticed the deletion"
        time.sleep(0.02)
    # It stopped long before the end, wrote nothing, and takes the next job.
    assert run.sample("qvgen_step_duration_seconds_count") < long.num_inference_steps
    next_id = _submit(settings)
    assert _wait(settings, next_id, _final)[JobField.STATUS] == "completed"
    assert not (settings.results_dir / job_id).exists()
    assert _wait(settings, job_id, lambda fields: not fields) == {}  # nothing wrote it back


def test_sigterm_hands_the_job_back_to_a_peer(
    settings: ServiceSettings, start_worker: Callable[..., Running]
) -> None:
    first = start_worker(step_delay_s=0.05, name="first")
    long = GenerationRequest(prompt="p", width=16, height=16, num_frames=1, num_inference_steps=40)
    job_id = _submit(settings, long)
    _wait(settings, job_id, lambda f: int(f.get(JobField.STEPS_DONE, "0")) >= 2)
    first.stop()  # what the SIGTERM handler calls; drain_timeout_s = 0: hand back at once
    handed = _wait(settings, job_id, lambda f: f[JobField.STATUS] == "queued")
    assert handed["status"] == "queued" and handed["handbacks"] == "1"
    start_worker(step_delay_s=0.0, name="second")
    fields = _wait(settings, job_id, _final)
    assert (fields[JobField.STATUS], fields[JobField.ATTEMPT], fields[JobField.WORKER]) == (
        "completed",
        "2",
        "second",
    )


def test_the_loop_survives_an_unexpected_error_and_the_job_runs_again(
    settings: ServiceSettings, start_worker: Callable[..., Running]
) -> None:
    blocked = settings.results_dir
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"a file where the results directory should be")
    run = start_worker()
    job_id = _submit(settings)
    # Storing the first attempt's video fails (NotADirectoryError); the worker logs it and goes on.
    _wait(settings, job_id, lambda f: f[JobField.ATTEMPT] == "1")
    deadline = time.monotonic() + 10
    while not _loop_errors(run) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _loop_errors(run) == 1
    blocked.unlink()
    # The job stays pending under the worker's name; past the claim timeout it runs again.
    fields = _wait(settings, job_id, _final)
    assert (fields[JobField.STATUS], fields[JobField.ATTEMPT]) == ("completed", "2")
    assert run.thread.is_alive()


def _loop_errors(run: Running) -> float:
    text = httpx.get(f"http://127.0.0.1:{run.worker.metrics_port}/metrics").text
    for line in text.splitlines():
        if line.startswith("qvgen_worker_loop_errors_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_worker_metrics_listen_on_the_configured_address(settings: ServiceSettings) -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        configured = settings.model_copy(update={"worker_metrics_host": host})
        worker = Worker(NoopEngine("tiny"), configured, "cpu", metrics_port=0)
        try:
            assert worker._metrics_server.server_address[0] == host
        finally:
            worker._metrics_server.shutdown()
            worker._metrics_server.server_close()
            worker.redis.close()
    assert ServiceSettings().worker_metrics_host == "127.0.0.1"


def test_torch_threads_follow_the_setting() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        limit_torch_threads(1)
        assert torch.get_num_threads() == 1
        assert threads_per_worker(0, workers=2) == max(1, available_cores() // 2)
        assert threads_per_worker(3, workers=2) == 3
    finally:
        torch.set_num_threads(before)


class _FailingEngine(NoopEngine):
    def generate(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("cannot open /srv/models/private-checkpoint: token=hunter2")


def test_an_engine_error_reaches_the_client_as_a_code_and_a_reference_only(
    settings: ServiceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _FailingEngine("tiny")
    run = Running(Worker(engine, settings.model_copy(update={"max_deliveries": 1}), "cpu"))
    try:
        fields = _wait(settings, _submit(settings), _final)
    finally:
        run.stop()
    assert (fields[JobField.STATUS], fields[JobField.ERROR_CODE]) == ("failed", "engine_error")
    message = fields[JobField.ERROR_MESSAGE]
    assert (
        "hunter2" not in message and "/srv/models" not in message and "RuntimeError" not in message
    )
    reference = message.split("reference ")[1].split(":")[0]
    assert reference.startswith("err_")
    # The operator finds the details by the reference.
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert logged and "hunter2" in str(logged[0].exc_info[1])  # type: ignore[index]
