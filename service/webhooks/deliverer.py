"""The webhook deliverer: ``qvgen serve webhooks``, a process of its own.

Why its own process, and not a worker thread or an API background task: a receiver that is slow
or down must not hold a GPU worker's loop or an API process's event loop, and an API task dies
with its process, so retries over hours need state outside it anyway (the outbox in Redis,
``service.webhooks.outbox``). A separate process is also the one component that needs outbound
network access to receivers: a deployment can restrict egress to it alone. It holds no model
and little memory; run one or more (they share the outbox; a claim is atomic). ``qvgen serve
all`` starts one beside its workers when webhooks are configured.

Loop: claim the due events (at most ``BATCH``), post them concurrently, then record each
outcome: 2xx → done; anything else (another status, a timeout, a refused connection) → retry
after the backoff, or dead-letter after ``webhook_max_attempts``. Redirects are not followed (a
receiver could point them anywhere). With nothing due it blocks on Redis until an event is
written or the next retry is due.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client import start_http_server
from redis.exceptions import RedisError

from service.metrics import WebhookMetrics, WebhookOutcome
from service.queue.connection import worker_client
from service.queue.keys import Keys
from service.queue.records import now_ms
from service.settings import ServiceSettings
from service.webhooks.outbox import Outbox, WebhookEvent, retry_delay_s
from service.webhooks.signing import secret_key, signed_headers

logger = logging.getLogger(__name__)

# Events posted at once (threads); a batch ends when its slowest attempt does.
BATCH = 8
# A claim's lease past the HTTP timeout: the time to record the outcome.
LEASE_MARGIN_S = 10.0
USER_AGENT = "qvgen-webhooks/1"
RETRY_PAUSE_S, MAX_RETRY_PAUSE_S = 0.05, 2.0


class WebhookDeliverer:
    def __init__(self, settings: ServiceSettings, rng: random.Random | None = None) -> None:
        if not settings.webhook_secret.get_secret_value():
            raise ValueError("QVGEN_WEBHOOK_SECRET is not set: there is nothing to sign with")
        self.settings = settings
        self._key = secret_key(settings.webhook_secret.get_secret_value())
        self.redis = worker_client(settings)
        self.outbox = Outbox(self.redis, Keys(settings.key_prefix))
        self._http = httpx.Client(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )
        self._pool = ThreadPoolExecutor(max_workers=BATCH, thread_name_prefix="webhook")
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self.metrics = WebhookMetrics()
        # Blocking waits on Redis stay within its socket timeout.
        self._max_wait_s = min(1.0, settings.redis_socket_timeout_s / 2)

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Deliver until ``request_stop``; Redis may come and go meanwhile."""
        pause = RETRY_PAUSE_S
        metrics_server, _ = start_http_server(
            self.settings.webhook_metrics_port,
            addr=self.settings.worker_metrics_host,
            registry=self.metrics.registry,
        )
        logger.info("webhook deliverer started (prefix %s)", self.settings.key_prefix)
        try:
            while not self._stop.is_set():
                try:
                    if not self.step():
                        self._wait()
                    pause = RETRY_PAUSE_S
                except RedisError as error:
                    logger.warning("Redis unreachable (%s); retrying in %.2f s", error, pause)
                    self._stop.wait(pause)
                    pause = min(pause * 2, MAX_RETRY_PAUSE_S)
        finally:
            self._pool.shutdown(wait=True)
            self._http.close()
            self.redis.close()
            metrics_server.shutdown()
            logger.info("webhook deliverer stopped")

    def step(self) -> int:
        """Claim and attempt the events due now; returns how many were attempted."""
        lease_ms = int((self.settings.webhook_timeout_s + LEASE_MARGIN_S) * 1000)
        events = self.outbox.claim(now_ms(), lease_ms, BATCH)
        for event, error in zip(events, self._pool.map(self._post, events), strict=True):
            self._record(event, error)
        return len(events)

    def _wait(self) -> None:
        due = self.outbox.next_due_ms()
        wait_s = self._max_wait_s if due is None else (due - now_ms()) / 1000
        if wait_s > 0:
            self.outbox.wait_for_new(min(wait_s, self._max_wait_s))

    def _post(self, event: WebhookEvent) -> str | None:
        """One attempt; None when the receiver took it (2xx), else what went wrong."""
        body = event.body()
        headers = signed_headers(self._key, event.id, int(time.time()), body)
        try:
            with self.metrics.attempt_time.time():
                response = self._http.post(event.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"

    def _record(self, event: WebhookEvent, error: str | None) -> None:
        attempts = self.metrics.attempts
        if error is None:
            attempts.labels(event.type, WebhookOutcome.DELIVERED).inc()
            self.outbox.done(event)
            logger.info("%s %s delivered (attempt %d)", event.type, event.id, event.attempt)
            return
        if event.attempt >= self.settings.webhook_max_attempts:
            attempts.labels(event.type, WebhookOutcome.DEAD_LETTER).inc()
            self.outbox.give_up(event, error, now_ms())
            logger.error(
                "%s %s to %s: giving up after %d attempts; last: %s",
                event.type,
                event.id,
                event.url,
                event.attempt,
                error,
            )
            return
        delay = retry_delay_s(
            event.attempt,
            self.settings.webhook_retry_base_s,
            self.settings.webhook_retry_max_s,
            self._rng,
        )
        attempts.labels(event.type, WebhookOutcome.RETRY).inc()
        self.outbox.retry(event, now_ms() + int(delay * 1000), error)
        logger.warning(
            "%s %s attempt %d failed (%s); next in %.1f s",
            event.type,
            event.id,
            event.attempt,
            error,
            delay,
        )
