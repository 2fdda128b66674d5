"""Prometheus metrics of the service: one registry for the API, one for each worker, one for
each webhook deliverer.

Names follow Prometheus conventions: the ``qvgen_`` prefix, base units (seconds, bytes) in the
suffix, ``_total`` on counters. Labels never carry a job id, a prompt or anything else a user
chooses freely: only the model id (from the operator's list), the route template, the status,
the error code and the device. Job durations get buckets from 1 s to 1 h because a generation
takes minutes; the default 5 ms–10 s buckets would put every job in ``+Inf``.

Each series is exported by exactly one kind of process, so summing over instances is right:
the API counts submissions, HTTP requests and cancellations and reads queue depth and live
workers from Redis at scrape time; a worker counts everything that happens to the jobs it runs;
a deliverer counts its webhook attempts.
"""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds; fit for jobs from a second to an hour.
JOB_SECONDS_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600)
# Seconds; a denoising step takes from milliseconds (tiny model) to tens of seconds.
STEP_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# Seconds; an API request should answer in milliseconds.
HTTP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Queue wait starts near zero (a free worker picks a job up in milliseconds).
QUEUE_WAIT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, *JOB_SECONDS_BUCKETS)


class ApiMetrics:
    """What the API process exports on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_request_duration = Histogram(
            "qvgen_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status code.",
            ["route", "method", "status"],
            buckets=HTTP_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "qvgen_jobs_submitted_total",
            "Jobs accepted into the queue.",
            ["model"],
            registry=self.registry,
        )
        self.jobs_rejected = Counter(
            "qvgen_jobs_rejected_total",
            "Submissions refused because the model's queue was full (answered 429).",
            ["model"],
            registry=self.registry,
        )
        self.redis_out_of_memory = Counter(
            "qvgen_redis_out_of_memory_total",
            "Requests answered 503 because Redis refused a write at maxmemory (noeviction).",
            registry=self.registry,
        )
        self.jobs_cancelled = Counter(
            "qvgen_jobs_cancelled_total",
            "Queued or running jobs cancelled through DELETE.",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "qvgen_queue_depth",
            "Unfinished jobs (queued plus running) in the model's stream.",
            ["model"],
            registry=self.registry,
        )
        self.workers_alive = Gauge(
            "qvgen_workers_alive",
            "Workers of the model that sent a heartbeat within the claim timeout.",
            ["model"],
            registry=self.registry,
        )


class WorkerMetrics:
    """What a worker exports on its own metrics port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_finished = Counter(
            "qvgen_jobs_finished_total",
            "Jobs this worker brought to a final state, by status and error code.",
            ["model", "status", "code"],
            registry=self.registry,
        )
        self.redeliveries = Counter(
            "qvgen_job_redeliveries_total",
            "Jobs started again after a worker went silent or handed them back.",
            ["model"],
            registry=self.registry,
        )
        self.deadletters = Counter(
            "qvgen_job_deadletters_total",
            "Jobs failed after running out of deliveries (a dead-letter record was written).",
            ["model"],
            registry=self.registry,
        )
        self.fenced_writes = Counter(
            "qvgen_worker_fenced_writes_total",
            "Writes refused because a newer attempt owns the job or it was cancelled.",
            ["model"],
            registry=self.registry,
        )
        self.loop_errors = Counter(
            "qvgen_worker_loop_errors_total",
            "Unexpected errors the worker loop survived (each logged with its traceback).",
            ["model"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "qvgen_worker_result_store_errors_total",
            "Results the result store failed to take; each such job runs again.",
            ["model"],
            registry=self.registry,
        )
        self.transformer_passes = Counter(
            "qvgen_transformer_passes_total",
            "Full transformer passes run by the jobs this worker completed (one per sample of a "
            "call that ran every block: two per step with guidance in the plain run).",
            ["model"],
            registry=self.registry,
        )
        self.transformer_passes_saved = Counter(
            "qvgen_transformer_passes_saved_total",
            "Transformer passes the cache and guidance-stop policies of the jobs this worker "
            "completed avoided, against the plain run of the same requests.",
            ["model"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "qvgen_job_queue_wait_seconds",
            "From submission to the first start of a job.",
            ["model"],
            buckets=QUEUE_WAIT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "qvgen_job_run_seconds",
            "From the start of the successful attempt to its result being stored.",
            ["model"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end = Histogram(
            "qvgen_job_end_to_end_seconds",
            "From submission to completion.",
            ["model"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "qvgen_step_duration_seconds",
            "Wall time of one denoising step.",
            ["model"],
            buckets=STEP_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.busy = Gauge(
            "qvgen_worker_busy",
            "1 while this worker runs a job.",
            ["model"],
            registry=self.registry,
        )
        self.transformer_compile = Gauge(
            "qvgen_worker_transformer_compile",
            "1 for how this worker's transformer runs: eager (chosen), compiled, or fallback "
            "(eager after torch.compile failed).",
            ["model", "status"],
            registry=self.registry,
        )
        self.gpu_memory_used = Gauge(
            "qvgen_gpu_memory_used_bytes",
            "GPU memory held by tensors of this process.",
            ["device"],
            registry=self.registry,
        )
        self.gpu_memory_peak = Gauge(
            "qvgen_gpu_memory_peak_bytes",
            "Peak GPU memory held by tensors of this process since it started.",
            ["device"],
            registry=self.registry,
        )
        self.gpu_memory_total = Gauge(
            "qvgen_gpu_memory_total_bytes",
            "Total memory of the GPU.",
            ["device"],
            registry=self.registry,
        )


# Seconds; a receiver should answer within its timeout (10 s by default).
WEBHOOK_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WebhookOutcome(enum.StrEnum):
    """What became of one delivery attempt."""

    DELIVERED = "delivered"  # the receiver answered 2xx
    RETRY = "retry"  # it did not; the event is due again after the backoff
    DEAD_LETTER = "dead_letter"  # it did not, on the last allowed attempt


class WebhookMetrics:
    """What a webhook deliverer (``qvgen serve webhooks``) exports on its metrics port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.attempts = Counter(
            "qvgen_webhook_attempts_total",
            "Webhook delivery attempts, by event type and outcome.",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.attempt_time = Histogram(
            "qvgen_webhook_attempt_seconds",
            "One attempt, from the request sent to the receiver's answer (or the failure).",
            buckets=WEBHOOK_SECONDS_BUCKETS,
            registry=self.registry,
        )
