"""The webhook deliverer: ``qvgen serve webhooks``, a process of its own.

Why its own process, and not a worker thread or an API background task: a receiver that is slow
or down must not hold a GPU worker's loop or an API process's event loop, and an API task dies
with its process, so retries over hours need state outside it anyway (the outbox in Redis,
``service.webhooks.outbox``). A separate process is also the one component that needs outbound
network access to receivers: a deployment can restrict egress to it alone. It holds no model
and little memory; run one or more (they share the outbox; a claim is atomic). ``qvgen serve
all`` starts one beside its workers when webhooks are configured.

Loop: claim as many due events as there are free attempt slots (``webhook_concurrency``), and
start each one's attempt in a thread, unless its receiver's host already has
``webhook_concurrency_per_host`` attempts running: then the event is handed back unattempted for
a moment, so that one slow host holds its share of the slots and no more. Each attempt records
its own outcome as it ends (no attempt waits for another): 2xx → done; anything else (another
status, the deadline, a refused connection or address) → retry after the backoff, or
dead-letter after ``webhook_max_attempts``; a URL the deliverer cannot parse is dead-lettered at
once. An attempt has one deadline for all of it (``webhook_timeout_s``), connects only to the
addresses its host resolves to that ``service.webhooks.urls`` allows, reads at most
``MAX_RESPONSE_BYTES`` of the answer and drops them. It is signed with its job owner's secret
(``service.webhooks.tenants``), or the single-tenant ``webhook_secret`` for the operator's own
``webhook_url`` and for an event without an owner. Redirects are not followed (a receiver
could point them anywhere). With nothing due it blocks on Redis until an event is written or
the next retry is due.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpcore
from prometheus_client import start_http_server
from redis.exceptions import RedisError

from service.metrics import WebhookMetrics, WebhookOutcome
from service.queue.connection import worker_client
from service.queue.keys import Keys
from service.queue.records import now_ms
from service.settings import ServiceSettings
from service.webhooks.outbox import Outbox, WebhookEvent, retry_delay_s
from service.webhooks.signing import secret_key, signed_headers
from service.webhooks.tenants import derive_secret, master_key
from service.webhooks.urls import (
    PinnedBackend,
    Resolver,
    WebhookPolicy,
    WebhookTarget,
    WebhookUrlError,
    parse_webhook_url,
    resolve,
)

logger = logging.getLogger(__name__)

# A claim's lease past the attempt's deadline: the time to record the outcome.
LEASE_MARGIN_S = 10.0
USER_AGENT = "qvgen-webhooks/1"
RETRY_PAUSE_S, MAX_RETRY_PAUSE_S = 0.05, 2.0
# Bytes of an answer read before the connection is closed: the status is what counts, and a
# receiver must not fill the deliverer's memory.
MAX_RESPONSE_BYTES = 64 << 10
# An event whose host has every one of its slots busy is due again this much later.
HOST_BUSY_PAUSE_MS = 200
_UNSIGNABLE = "an event without an owner needs QVGEN_WEBHOOK_SECRET"
_HTTP_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)


@dataclass(frozen=True)
class Outcome:
    """An attempt's end: ``error`` None when the receiver took the event (2xx); ``final``
    when no later attempt could go better (a URL the deliverer cannot parse)."""

    error: str | None
    final: bool = False


class WebhookDeliverer:
    """``resolver`` turns a host into addresses (the system's by default; tests name theirs)."""

    def __init__(
        self,
        settings: ServiceSettings,
        rng: random.Random | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        single = settings.webhook_secret.get_secret_value()
        if not single and not settings.per_key_webhook_secrets:
            raise ValueError(
                "QVGEN_WEBHOOK_SECRET is not set (nor QVGEN_WEBHOOK_MASTER_SECRET with API keys): "
                "there is nothing to sign with"
            )
        self.settings = settings
        self._key = secret_key(single) if single else None
        master = settings.webhook_master_secret.get_secret_value()
        self._master = master_key(master) if settings.per_key_webhook_secrets else None
        self.redis = worker_client(settings)
        self.outbox = Outbox(self.redis, Keys(settings.key_prefix))
        self._resolver = resolver
        self._policy = settings.webhook_policy()
        self._ssl = ssl.create_default_context()
        self._pool = ThreadPoolExecutor(
            max_workers=settings.webhook_concurrency, thread_name_prefix="webhook"
        )
        # Attempts running, in all and per host; guarded by the condition's lock.
        self._slots = threading.Condition()
        self._running = 0
        self._per_host: Counter[str] = Counter()
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
            self._pool.shutdown(wait=True)  # each attempt ends by its deadline
            self.redis.close()
            metrics_server.shutdown()
            logger.info("webhook deliverer stopped")

    def step(self) -> int:
        """Claim the due events there are free slots for and start their attempts; returns how
        many attempts were started."""
        with self._slots:
            free = self.settings.webhook_concurrency - self._running
        if free <= 0:
            return 0
        lease_ms = int((self.settings.webhook_timeout_s + LEASE_MARGIN_S) * 1000)
        started = 0
        for event in self.outbox.claim(now_ms(), lease_ms, free):
            host = _host_of(event.url)
            with self._slots:
                busy = self._per_host[host] >= self.settings.webhook_concurrency_per_host
                if not busy:
                    self._running += 1
                    self._per_host[host] += 1
            if busy:
                self.outbox.postpone(event, now_ms() + HOST_BUSY_PAUSE_MS)
                continue
            self._pool.submit(self._attempt, event, host)
            started += 1
        return started

    def _wait(self) -> None:
        with self._slots:
            if self._running >= self.settings.webhook_concurrency:
                self._slots.wait(self._max_wait_s)  # until an attempt ends
                return
        due = self.outbox.next_due_ms()
        wait_s = self._max_wait_s if due is None else (due - now_ms()) / 1000
        if wait_s > 0:
            self.outbox.wait_for_new(min(wait_s, self._max_wait_s))

    def _attempt(self, event: WebhookEvent, host: str) -> None:
        """One attempt and its outcome, in a thread of the pool; frees its slot when done."""
        try:
            self._record(event, self._post(event))
        except RedisError as error:
            # The claim's lease runs out and the event is attempted again: at least once.
            logger.warning("%s %s: outcome not recorded (%s)", event.type, event.id, error)
        except Exception:
            logger.exception("%s %s: attempt failed unexpectedly", event.type, event.id)
        finally:
            with self._slots:
                self._running -= 1
                self._per_host[host] -= 1
                if not self._per_host[host]:
                    del self._per_host[host]
                self._slots.notify_all()

    def _post(self, event: WebhookEvent) -> Outcome:
        """One attempt, ended by ``webhook_timeout_s`` whatever the receiver does."""
        try:
            target = parse_webhook_url(event.url)
        except WebhookUrlError as error:
            return Outcome(f"unusable URL: {error}", final=True)
        key = self._key_for(event)
        if key is None:
            return Outcome("no secret signs it: " + _UNSIGNABLE, final=True)
        body = event.body()
        headers = [
            ("host", target.host_header),
            ("user-agent", USER_AGENT),
            ("content-type", "application/json"),
            *signed_headers(key, event.id, int(time.time()), body).items(),
        ]
        deadline = time.monotonic() + self.settings.webhook_timeout_s
        backend = PinnedBackend(self._resolver, self._policy_for(event), deadline)
        try:
            with self.metrics.attempt_time.time():
                status = _send(backend, self._ssl, target, headers, body)
        except _HTTP_ERRORS as error:
            return Outcome(f"{type(error).__name__}: {error}")
        return Outcome(None if 200 <= status < 300 else f"HTTP {status}")

    def _key_for(self, event: WebhookEvent) -> bytes | None:
        """The HMAC key that signs ``event``: its owner's (at the generation read when it was
        claimed) with per-key secrets on; the single-tenant secret for the operator's own
        ``webhook_url`` and for events without an owner (written before per-key secrets, or
        with no API keys); None when that secret is not set."""
        operators = bool(self.settings.webhook_url) and event.url == self.settings.webhook_url
        if self._master is None or not event.owner or operators:
            return self._key
        return secret_key(derive_secret(self._master, event.owner, event.generation))

    def _policy_for(self, event: WebhookEvent) -> WebhookPolicy:
        if self.settings.webhook_url and event.url == self.settings.webhook_url:
            return self._policy.trusting()  # the operator's own receiver
        return self._policy

    def _record(self, event: WebhookEvent, outcome: Outcome) -> None:
        attempts = self.metrics.attempts
        error = outcome.error
        if error is None:
            attempts.labels(event.type, WebhookOutcome.DELIVERED).inc()
            self.outbox.done(event)
            logger.info("%s %s delivered (attempt %d)", event.type, event.id, event.attempt)
            return
        if outcome.final or event.attempt >= self.settings.webhook_max_attempts:
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


def _host_of(url: str) -> str:
    """The receiver host an event's attempts count against (its URL as written if it does not
    parse: the attempt then ends at once)."""
    try:
        return parse_webhook_url(url).host
    except WebhookUrlError:
        return url


def _send(
    backend: PinnedBackend,
    ssl_context: ssl.SSLContext,
    target: WebhookTarget,
    headers: Sequence[tuple[bytes | str, bytes | str]],
    body: bytes,
) -> int:
    """POST ``body`` on a connection of its own; the answer's status, having read at most
    ``MAX_RESPONSE_BYTES`` of its body (closing the connection drops the rest)."""
    with (
        httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=backend,
        ) as pool,
        pool.stream("POST", target.url(), headers=headers, content=body) as response,
    ):
        read = 0
        for chunk in response.iter_stream():
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                break
        return response.status
