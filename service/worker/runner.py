"""The worker loop: take a job, run it on the engine, store the result, say so — or stop.

Shutdown (SIGTERM, SIGINT): no new job is taken; the running one may finish within
``drain_timeout_s``, after which the engine stops at its next step and the job is handed back
(requeued for any peer at once, without spending one of its deliveries).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import cast

from prometheus_client import start_http_server
from redis.exceptions import OutOfMemoryError, RedisError

from service.engine.types import (
    CompileStatus,
    Engine,
    GeneratedVideo,
    GenerationCancelled,
    InvalidRequest,
)
from service.metrics import WorkerMetrics
from service.queue.connection import worker_client
from service.queue.consumer import Claim, Consumer, StartOutcome
from service.queue.records import ErrorCode, JobField, JobRecord, JobStatus
from service.queue.redis_config import UnsafeRedisConfig, check_redis
from service.settings import ServiceSettings
from service.storage import StoreUnavailable, open_store
from service.worker.liveness import Heartbeat

logger = logging.getLogger(__name__)

# How long one blocking read waits for a new job before looking at silent peers' jobs again.
MAX_BLOCK_MS = 1000
# Retry pause while Redis is unreachable (doubles up to the maximum).
RETRY_PAUSE_S, MAX_RETRY_PAUSE_S = 0.05, 2.0


def _is_status(engine: Engine, status: CompileStatus) -> float:
    return float(engine.compile_status is status)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class _Stop:
    requested_at: float | None = None


class Worker:
    """Runs ``engine`` on the jobs of ``engine.model_id`` until asked to stop."""

    def __init__(
        self,
        engine: Engine,
        settings: ServiceSettings,
        device: str,
        name: str | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.device = device
        self.model = engine.model_id
        self.redis = worker_client(settings)
        self.consumer = Consumer(self.redis, settings, self.model, name or consumer_name())
        self.results = open_store(settings)
        self.metrics = WorkerMetrics()
        for status in CompileStatus:
            self.metrics.transformer_compile.labels(self.model, status.value).set_function(
                functools.partial(_is_status, engine, status)
            )
        port = settings.worker_metrics_port if metrics_port is None else metrics_port
        self._metrics_server, _ = start_http_server(
            port, addr=settings.worker_metrics_host, registry=self.metrics.registry
        )
        self.metrics_port = int(self._metrics_server.server_port)
        self.heartbeat = Heartbeat(
            self.consumer, settings.heartbeat_interval_s, device, self.metrics, self.metrics_port
        )
        self._stop = _Stop()
        self._stop_event = threading.Event()
        self._last_janitor = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        logger.info("signal %d: taking no new job", signum)
        self.request_stop()

    def request_stop(self) -> None:
        if self._stop.requested_at is None:
            self._stop.requested_at = time.monotonic()
        self._stop_event.set()

    def _hand_back_due(self) -> bool:
        requested = self._stop.requested_at
        return (
            requested is not None and time.monotonic() - requested >= self.settings.drain_timeout_s
        )

    def run(self) -> None:
        """Take and run jobs until ``request_stop``. Redis may be down at the start or at any
        time: the worker waits for it. Only an unsafe Redis configuration (``UnsafeRedisConfig``,
        production) ends it early."""
        pause = RETRY_PAUSE_S
        prepared = False
        try:
            while not self._stop_event.is_set():
                try:
                    if not prepared:
                        self._prepare()
                        prepared = True
                    self._step()
                    pause = RETRY_PAUSE_S
                    continue
                except UnsafeRedisConfig:
                    raise
                except RedisError as error:
                    logger.warning("Redis unreachable (%s); retrying in %.2f s", error, pause)
                except Exception:
                    # Only a deliberate stop ends the loop. A job that was running stays pending
                    # under this worker's name: once its claim times out, a worker (this one or
                    # a peer) runs it again, and max_deliveries bounds the retries.
                    logger.exception("worker loop error; going on in %.2f s", pause)
                    self.metrics.loop_errors.labels(self.model).inc()
                self._stop_event.wait(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE_S)
        finally:
            if prepared:
                self.heartbeat.stop()
                try:
                    self.consumer.retire()
                except RedisError:
                    logger.warning("could not deregister; peers will see the heartbeat lapse")
            self._metrics_server.shutdown()
            self.redis.close()
            logger.info("worker %s stopped", self.consumer.name)

    def _prepare(self) -> None:
        check_redis(self.redis, self.settings)
        self.consumer.ensure_group()
        try:
            self.consumer.publish_rules(self.engine.rules)
        except OutOfMemoryError:
            # Redis is full; the janitor publishes them once it has room. Meanwhile the API
            # applies its static bounds, and this engine's own check guards the rest.
            logger.warning("Redis is full: request rules not published yet")
        self.heartbeat.beat()
        self.heartbeat.start()
        logger.info(
            "worker %s serving %r on %s; metrics on port %d",
            self.consumer.name,
            self.model,
            self.device,
            self.metrics_port,
        )

    def _step(self) -> None:
        block_ms = min(MAX_BLOCK_MS, int(self.settings.claim_timeout_s * 500))
        delivery = self.consumer.next_job(block_ms=max(1, block_ms))
        if delivery is None:
            self._janitor()
            return
        if delivery.outcome is StartOutcome.DEAD:
            self.metrics.deadletters.labels(self.model).inc()
            self._count_finished(JobStatus.FAILED, ErrorCode.MAX_DELIVERIES)
        elif delivery.outcome is StartOutcome.EXPIRED:
            self._count_finished(JobStatus.FAILED, ErrorCode.EXPIRED)
        if delivery.claim is not None:
            self._run(delivery.claim)

    # --- one job -------------------------------------------------------------------------

    def _run(self, claim: Claim) -> None:
        job = claim.job
        logger.info("job %s attempt %d started", job.id, claim.attempt)
        if claim.attempt > 1:
            self.metrics.redeliveries.labels(self.model).inc()
        if job.started_at_ms is not None and claim.attempt == 1:
            self.metrics.queue_wait.labels(self.model).observe(
                max(0, job.started_at_ms - job.created_at_ms) / 1000
            )
        self.heartbeat.watch(claim)
        self.metrics.busy.labels(self.model).set(1)
        try:
            video = self._generate(claim)
            if video is not None:
                # Under the heartbeat: an upload may take longer than the claim timeout.
                self._store(claim, video)
        finally:
            self.heartbeat.watch(None)
            self.metrics.busy.labels(self.model).set(0)

    def _generate(self, claim: Claim) -> GeneratedVideo | None:
        """The engine's video, or None when it stopped (cancelled, fenced, handed back, failed)."""
        last_step = [time.perf_counter()]

        def on_step(done: int, total: int) -> None:
            now = time.perf_counter()
            self.metrics.step_duration.labels(self.model).observe(now - last_step[0])
            last_step[0] = now
            try:
                if not self.consumer.progress(claim, done, total):
                    self.heartbeat.lost.set()
            except RedisError as error:
                logger.warning("progress not recorded: %s", error)

        def should_cancel() -> bool:
            if self.heartbeat.lost.is_set() or self._hand_back_due():
                return True
            try:
                return not self.consumer.still_mine(claim)
            except RedisError:
                return False  # keep generating through a Redis blip; fencing guards the end

        try:
            return self.engine.generate(claim.job.request, on_step, should_cancel)
        except GenerationCancelled as stopped:
            self._after_cancel(claim, stopped.steps_done)
        except InvalidRequest as error:
            # The API checked this request against the rules workers published; this engine's
            # differ (a worker with other limits started after the submission).
            logger.warning(
                "job %s: accepted request refused by this engine (%s); its rules differ from "
                "those published when it was submitted",
                claim.job.id,
                error,
            )
            self._fail(claim, ErrorCode.INVALID_REQUEST, str(error))
        except Exception:
            # The exception's text may name paths, hosts or a model's internals: it stays in
            # this log, and the client gets a reference to find it by.
            reference = f"err_{secrets.token_hex(8)}"
            logger.exception(
                "job %s attempt %d: engine error %s", claim.job.id, claim.attempt, reference
            )
            self._fail(
                claim,
                ErrorCode.ENGINE_ERROR,
                f"the engine failed on this job (reference {reference}: quote it to the "
                "operator, whose worker log holds the details)",
            )
        return None

    def _after_cancel(self, claim: Claim, steps_done: int) -> None:
        handing_back = self._hand_back_due() and not self.heartbeat.lost.is_set()
        if handing_back and self._retrying(lambda: self.consumer.hand_back(claim)):
            logger.info("job %s handed back after %d steps", claim.job.id, steps_done)
            return
        logger.info(
            "job %s attempt %d stopped after %d steps: deleted or taken over",
            claim.job.id,
            claim.attempt,
            steps_done,
        )
        self.metrics.fenced_writes.labels(self.model).inc()

    def _store(self, claim: Claim, video: GeneratedVideo) -> None:
        try:
            stored = self.results.write(claim.job.id, claim.attempt, video)
        except StoreUnavailable as error:
            # Never completed without its files: the job stays pending under this worker, and
            # once its claim times out a worker runs it again (a delivery: max_deliveries bounds
            # the tries).
            logger.warning(
                "job %s attempt %d not stored, it runs again: %s",
                claim.job.id,
                claim.attempt,
                error,
            )
            self.metrics.store_errors.labels(self.model).inc()
            return
        written = self._retrying(
            lambda: self.consumer.complete(
                claim,
                stored.video,
                stored.thumbnail,
                spritesheet_path=stored.spritesheet,
                stats=video.stats,
            )
        )
        if not written:
            logger.warning(
                "job %s attempt %d: result refused (a newer attempt owns the job, or it was "
                "cancelled); deleting its files",
                claim.job.id,
                claim.attempt,
            )
            self.results.delete(stored)
            self.metrics.fenced_writes.labels(self.model).inc()
            return
        logger.info("job %s attempt %d completed", claim.job.id, claim.attempt)
        self._count_finished(JobStatus.COMPLETED, None)
        self.metrics.transformer_passes.labels(self.model).inc(video.stats.transformer_passes)
        self.metrics.transformer_passes_saved.labels(self.model).inc(
            video.stats.transformer_passes_saved
        )
        self._observe_durations(claim.job)

    def _fail(self, claim: Claim, code: ErrorCode, message: str) -> None:
        if self._retrying(lambda: self.consumer.fail(claim, code, message)):
            logger.info("job %s failed: %s", claim.job.id, code.value)
            self._count_finished(JobStatus.FAILED, code)
        else:
            self.metrics.fenced_writes.labels(self.model).inc()

    def _retrying(self, write: Callable[[], bool]) -> bool:
        """Run a final write until Redis answers (or shutdown stops the wait after a while)."""
        pause = RETRY_PAUSE_S
        deadline = time.monotonic() + max(60.0, self.settings.claim_timeout_s * 4)
        while True:
            try:
                return bool(write())
            except RedisError as error:
                if time.monotonic() > deadline:
                    logger.error("giving up a final write after Redis stayed away: %s", error)
                    return False
                logger.warning("final write failed (%s); retrying in %.2f s", error, pause)
                time.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE_S)

    # --- bookkeeping ---------------------------------------------------------------------

    def _count_finished(self, status: JobStatus, code: ErrorCode | None) -> None:
        label = code.value if code is not None else "none"
        self.metrics.jobs_finished.labels(self.model, status.value, label).inc()

    def _observe_durations(self, job: JobRecord) -> None:
        record = cast(dict[str, str], self.redis.hgetall(self.consumer.keys.job(job.id)))
        if not record:
            return
        done = JobRecord.from_hash(record)
        if done.completed_at_ms is None:
            return
        if done.attempt_started_at_ms is not None:
            self.metrics.run_time.labels(self.model).observe(
                (done.completed_at_ms - done.attempt_started_at_ms) / 1000
            )
        self.metrics.end_to_end.labels(self.model).observe(
            (done.completed_at_ms - done.created_at_ms) / 1000
        )

    def _janitor(self) -> None:
        now = time.monotonic()
        if now - self._last_janitor < self.settings.janitor_interval_s:
            return
        self._last_janitor = now
        expired = self.consumer.expire_queued()
        if expired:
            self.metrics.jobs_finished.labels(
                self.model, JobStatus.FAILED.value, ErrorCode.EXPIRED.value
            ).inc(expired)
        reaped = self.consumer.reap()
        removed = self.results.sweep(self._kept_files, grace_s=self.settings.claim_timeout_s * 2)
        # A consumer silent for two claim timeouts holding nothing is a crashed or stopped worker.
        gone = self.consumer.remove_idle_peers(int(self.settings.claim_timeout_s * 2000))
        if expired or reaped or removed or gone:
            logger.info(
                "janitor: %d queued jobs expired, %d past retention unlisted, %d files removed, "
                "%d dead consumers removed",
                expired,
                reaped,
                removed,
                gone,
            )
        with contextlib.suppress(OutOfMemoryError):  # room comes back as jobs expire
            self.consumer.publish_rules(self.engine.rules, only_if_missing=True)

    def _kept_files(self, job_id: str) -> set[str] | None:
        key = self.consumer.keys.job(job_id)
        if not self.redis.exists(key):
            return None
        fields: list[str | None] = self.redis.hmget(  # type: ignore[assignment]
            key, [JobField.VIDEO_PATH, JobField.THUMBNAIL_PATH, JobField.SPRITESHEET_PATH]
        )
        return {value for value in fields if value}
