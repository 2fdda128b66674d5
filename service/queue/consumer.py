"""The worker's side of the queue (blocking): claim a job, keep it, report on it, finish it.

One ``Consumer`` is one consumer of the model's group: one per GPU. A job is taken either fresh
(``XREADGROUP >``) or from a silent peer (``XAUTOCLAIM`` of an entry idle longer than the claim
timeout); either way ``START`` decides atomically whether it runs and with which attempt.
While it runs, ``heartbeat`` refreshes the pending entry (only while it is still ours) so that
it never looks idle; ``still_mine`` and ``progress`` tell the engine when to stop.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.exceptions import ResponseError

from service.engine.rules import EngineRules
from service.engine.types import GenerationStats
from service.queue import scripts
from service.queue.keys import DEADLETTER_MAXLEN, ENTRY_JOB_FIELD, GROUP, Keys
from service.queue.records import (
    ErrorCode,
    JobField,
    JobRecord,
    JobStatus,
    now_ms,
    webhook_event_id,
)
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

# XCLAIM IDLE for a hand-back: far past any claim timeout, so any peer's XAUTOCLAIM takes it.
HAND_BACK_IDLE_MS = 10**11
# XAUTOCLAIM looks at no more than 10 × COUNT pending entries per call (COUNT is 1: a worker
# runs one job), so one look for a silent peer's job walks the pending list with the returned
# cursor, up to this many calls (10 000 entries: far more than there are running jobs).
MAX_CLAIM_CALLS = 1000
_START_OF_PENDING = "0-0"


class StartOutcome(enum.StrEnum):
    STARTED = "started"
    LOST = "lost"  # another consumer took the entry between our read and START
    GONE = "gone"  # the job hash no longer exists (deleted, or past retention)
    FINAL = "final"  # already completed, failed or cancelled
    EXPIRED = "expired"  # waited in the queue past its deadline
    DEAD = "dead"  # out of deliveries: failed, dead-letter record written


@dataclass(frozen=True)
class Claim:
    """A job this consumer runs, under ``attempt`` (every write names it)."""

    job: JobRecord
    stream_id: str
    attempt: int
    reclaimed: bool  # taken from a silent peer or a hand-back, not fresh from the stream


@dataclass(frozen=True)
class Delivery:
    """What became of one stream entry this consumer took."""

    outcome: StartOutcome
    claim: Claim | None


def _stream_order(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


class Consumer:
    """Consumer ``name`` of ``model``'s group."""

    def __init__(
        self, client: redis.Redis, settings: ServiceSettings, model: str, name: str
    ) -> None:
        self._redis = client
        self._settings = settings
        self.model = model
        self.name = name
        self.keys = Keys(settings.key_prefix)
        self._stream = self.keys.stream(model)
        self._start = client.register_script(scripts.START)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._progress = client.register_script(scripts.PROGRESS)
        self._finish = client.register_script(scripts.FINISH)
        self._hand_back = client.register_script(scripts.HAND_BACK)
        self._expire = client.register_script(scripts.EXPIRE_QUEUED)
        self._announce = client.register_script(scripts.ANNOUNCE)
        self._remove_consumer = client.register_script(scripts.REMOVE_IDLE_CONSUMER)
        self._reap = client.register_script(scripts.REAP)
        # Where the next look for a silent peer's job continues in the pending list.
        self._claim_cursor = _START_OF_PENDING

    @property
    def _claim_timeout_ms(self) -> int:
        return int(self._settings.claim_timeout_s * 1000)

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # --- taking a job --------------------------------------------------------------------

    def next_job(self, block_ms: int) -> Delivery | None:
        """Take one entry (a silent peer's first, else a fresh one, waiting up to ``block_ms``)."""
        reclaimed = self._autoclaim()
        if reclaimed is not None:
            return self._begin(*reclaimed, reclaimed=True)
        fresh = self._read(block_ms)
        if fresh is None:
            return None
        return self._begin(*fresh, reclaimed=False)

    def _autoclaim(self) -> tuple[str, str] | None:
        """Claim one entry idle past the claim timeout, walking the whole pending list once:
        from where the last look stopped to its end, then from its start back to there."""
        began = self._claim_cursor
        wrapped = False
        for _ in range(MAX_CLAIM_CALLS):
            try:
                reply: Any = self._redis.xautoclaim(
                    self._stream,
                    GROUP,
                    self.name,
                    self._claim_timeout_ms,
                    start_id=self._claim_cursor,
                    count=1,
                )
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                self.ensure_group()
                return None
            cursor, entries = reply[0], reply[1]
            self._claim_cursor = cursor
            if entries:
                stream_id, fields = entries[0]
                return stream_id, fields[ENTRY_JOB_FIELD]
            if cursor == _START_OF_PENDING:
                if wrapped or began == _START_OF_PENDING:
                    return None
                wrapped = True
            elif wrapped and _stream_order(cursor) >= _stream_order(began):
                return None
        return None

    def _read(self, block_ms: int) -> tuple[str, str] | None:
        try:
            reply: Any = self._redis.xreadgroup(
                GROUP, self.name, {self._stream: ">"}, count=1, block=block_ms
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self.ensure_group()
            return None
        if not reply:
            return None
        stream_id, fields = reply[0][1][0]
        return stream_id, fields[ENTRY_JOB_FIELD]

    def _begin(self, stream_id: str, job_id: str, *, reclaimed: bool) -> Delivery:
        reply = self._start(
            keys=[
                self.keys.job(job_id),
                self._stream,
                self.keys.deadletter,
                self.keys.expiring,
                *self._end_keys(job_id),
            ],
            args=[
                stream_id,
                self.name,
                now_ms(),
                self._settings.max_deliveries,
                self._settings.retention_s * 1000,
                GROUP,
                DEADLETTER_MAXLEN,
            ],
        )
        outcome = StartOutcome(reply[0])
        if outcome is not StartOutcome.STARTED:
            logger.info("job %s not started: %s", job_id, outcome.value)
            return Delivery(outcome=outcome, claim=None)
        record = JobRecord.from_hash(
            cast(dict[str, str], self._redis.hgetall(self.keys.job(job_id)))
        )
        claim = Claim(job=record, stream_id=stream_id, attempt=int(reply[1]), reclaimed=reclaimed)
        return Delivery(outcome=outcome, claim=claim)

    def _end_keys(self, job_id: str) -> list[str]:
        """What a script that may end the job writes besides the job: its event stream, its
        webhook event (with the due set and the deliverers' wake-up list) and the model's
        counts of unfinished jobs per owner."""
        return [
            self.keys.events(job_id),
            self.keys.webhook(webhook_event_id(job_id)),
            self.keys.webhooks_due,
            self.keys.webhooks_wake,
            self.keys.unfinished(self.model),
        ]

    # --- while it runs ---------------------------------------------------------------------

    def heartbeat(self, claim: Claim) -> bool:
        """Reset the entry's idle time if it is still ours under this attempt; False: stop."""
        refreshed = self._heartbeat(
            keys=[self.keys.job(claim.job.id), self._stream],
            args=[claim.stream_id, self.name, claim.attempt, GROUP],
        )
        return bool(refreshed)

    def progress(self, claim: Claim, steps_done: int, steps_total: int) -> bool:
        """Record steps done; False when the attempt was fenced off or the job deleted."""
        ok = self._progress(
            keys=[self.keys.job(claim.job.id), self.keys.events(claim.job.id)],
            args=[claim.attempt, steps_done, steps_total],
        )
        return bool(ok)

    def still_mine(self, claim: Claim) -> bool:
        """True while the job is ``in_progress`` under this attempt (not deleted, not taken)."""
        ok = self._progress(
            keys=[self.keys.job(claim.job.id), self.keys.events(claim.job.id)],
            args=[claim.attempt, "", ""],
        )
        return bool(ok)

    # --- ending it ------------------------------------------------------------------------

    def complete(
        self,
        claim: Claim,
        video_path: str,
        thumbnail_path: str,
        spritesheet_path: str | None = None,
        stats: GenerationStats | None = None,
    ) -> bool:
        """Mark completed with the result files and the generation's transformer passes (run
        and saved, from ``stats``); False when fenced (delete the files then)."""
        fields = {JobField.VIDEO_PATH: video_path, JobField.THUMBNAIL_PATH: thumbnail_path}
        if spritesheet_path is not None:
            fields[JobField.SPRITESHEET_PATH] = spritesheet_path
        if stats is not None:
            fields[JobField.TRANSFORMER_PASSES] = str(stats.transformer_passes)
            fields[JobField.TRANSFORMER_PASSES_SAVED] = str(stats.transformer_passes_saved)
        return self._end(claim, JobStatus.COMPLETED, fields)

    def fail(self, claim: Claim, code: ErrorCode, message: str) -> bool:
        return self._end(
            claim,
            JobStatus.FAILED,
            {JobField.ERROR_CODE: code.value, JobField.ERROR_MESSAGE: message},
        )

    def _end(self, claim: Claim, status: JobStatus, fields: dict[JobField, str]) -> bool:
        args: list[str | int] = [
            claim.stream_id,
            claim.attempt,
            GROUP,
            now_ms(),
            self._settings.retention_s * 1000,
            status.value,
        ]
        for name, value in fields.items():
            args += [name.value, value]
        written = self._finish(
            keys=[
                self.keys.job(claim.job.id),
                self._stream,
                self.keys.expiring,
                *self._end_keys(claim.job.id),
            ],
            args=args,
        )
        return bool(written)

    def hand_back(self, claim: Claim) -> bool:
        """Requeue the job for any peer at once (SIGTERM); it does not count as a delivery."""
        handed = self._hand_back(
            keys=[self.keys.job(claim.job.id), self._stream, self.keys.events(claim.job.id)],
            args=[claim.stream_id, claim.attempt, GROUP, self.name, HAND_BACK_IDLE_MS],
        )
        return bool(handed)

    # --- housekeeping ---------------------------------------------------------------------

    def expire_queued(self, limit: int = 100) -> int:
        """Fail queued jobs older than the queue deadline; returns how many expired.

        Stream ids start with their enqueue time in ms, so the candidates are one XRANGE.
        """
        newest = now_ms() - self._settings.queued_ttl_s * 1000
        entries: Any = self._redis.xrange(self._stream, "-", f"{newest}-0", count=limit)
        expired = 0
        for stream_id, fields in entries:
            job_id = fields[ENTRY_JOB_FIELD]
            expired += int(
                self._expire(
                    keys=[
                        self.keys.job(job_id),
                        self._stream,
                        self.keys.expiring,
                        *self._end_keys(job_id),
                    ],
                    args=[stream_id, GROUP, now_ms(), self._settings.retention_s * 1000],
                )
            )
        return expired

    def reap(self, limit: int = 1000) -> int:
        """Drop jobs whose retention has ended from the listings (their hashes expire by
        themselves); returns how many. Any worker of any model may do it."""
        return int(
            self._reap(
                keys=[self.keys.expiring, self.keys.jobs],
                args=[now_ms(), limit, self.keys.owner_jobs_prefix, self.keys.job("")],
            )
        )

    def announce(self, device: str, metrics_port: int) -> None:
        """Say this worker is alive (readiness reads it); call at least once per heartbeat."""
        info = {"model": self.model, "device": device, "pid": os.getpid(), "port": metrics_port}
        self._announce(
            keys=[self.keys.workers(self.model), self.keys.worker(self.name)],
            args=[
                self.name,
                time.time(),
                json.dumps(info),
                max(1, int(self._settings.claim_timeout_s * 2)),
            ],
        )

    def publish_rules(self, rules: EngineRules | None, *, only_if_missing: bool = False) -> None:
        """Store the model's request rules for the API (None: remove them, so that rules of an
        engine served earlier under this model id do not linger). ``only_if_missing``: restore
        them after a loss (a Redis without AOF restarted) without overwriting a peer's."""
        key = self.keys.rules(self.model)
        if rules is None:
            if not only_if_missing:
                self._redis.delete(key)
        else:
            self._redis.set(key, json.dumps(rules.to_dict()), nx=only_if_missing)

    def remove_idle_peers(self, min_idle_ms: int) -> int:
        """Remove consumers of the group that hold no entry and have not read for
        ``min_idle_ms`` (workers that crashed or stopped), and worker registrations whose last
        heartbeat is as old; returns the consumers removed."""
        removed = 0
        consumers: Any = self._redis.xinfo_consumers(self._stream, GROUP)
        for consumer in consumers:
            name = str(consumer["name"])
            if name == self.name or int(consumer["pending"]) or int(consumer["idle"]) < min_idle_ms:
                continue
            removed += int(
                self._remove_consumer(keys=[self._stream], args=[GROUP, name, min_idle_ms])
            )
        self._redis.zremrangebyscore(
            self.keys.workers(self.model), "-inf", time.time() - min_idle_ms / 1000
        )
        return removed

    def retire(self) -> None:
        """Deregister on a clean stop; the consumer goes too unless it still holds an entry (a
        job handed back stays its until a peer claims it)."""
        self._remove_consumer(keys=[self._stream], args=[GROUP, self.name, 0])
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.workers(self.model), self.name)
            pipe.delete(self.keys.worker(self.name))
            pipe.execute()
