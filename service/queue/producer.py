"""The API's side of the queue (asyncio): submit, read, list and cancel jobs."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.engine.rules import EngineRules
from service.engine.types import GenerationRequest
from service.queue import scripts
from service.queue.keys import GROUP, Keys
from service.queue.records import (
    JobField,
    JobRecord,
    JobStatus,
    created_ms_of,
    is_job_id,
    new_job_id,
    now_ms,
    request_to_json,
)
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

# How old the rules a submission is checked against may be: a worker with other rules is heard
# of within this long (until then its own check guards it).
RULES_MAX_AGE_S = 2.0
# A page is filled past entries of gone jobs in at most this many rounds.
MAX_LIST_BATCHES = 20
# Ids made before creation times were part of them decode to noise; none is earlier than this
# (2020-01-01) or later than a day from now.
EARLIEST_ID_MS = 1_577_836_800_000
# Calls of SETTLE after a submission went unanswered, each waiting up to the socket timeout.
SETTLE_ATTEMPTS = 3
# A tombstone outlives any submission still on its way to Redis (in a socket buffer while Redis
# was frozen, say).
TOMBSTONE_TTL_S = 3600
# A deleted job's event stream outlives it this long (ms), so that a reader blocked on it hears
# of the deletion.
EVENTS_LINGER_MS = 60_000


class QueueFull(Exception):
    """The model's stream holds ``max_queue_depth`` unfinished jobs."""

    def __init__(self, model: str, depth: int) -> None:
        super().__init__(f"the queue of model {model!r} is full ({depth} unfinished jobs)")
        self.model = model
        self.depth = depth


class KeyQuotaReached(Exception):
    """The submitting API key has ``max_jobs_per_key`` unfinished jobs of the model already."""

    def __init__(self, model: str, unfinished: int, limit: int) -> None:
        super().__init__(
            f"this API key has {unfinished} unfinished (queued or running) jobs of model "
            f"{model!r}; QVGEN_MAX_JOBS_PER_KEY allows {limit} per key and model"
        )
        self.model = model
        self.unfinished = unfinished
        self.limit = limit


class IdempotencyConflict(Exception):
    """The ``Idempotency-Key`` was used before with another request, whose job still exists."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r:.80} was used for a different request (job {job_id}); "
            "send a new key with a new request"
        )
        self.key = key
        self.job_id = job_id


class NotCreated(Exception):
    """Redis did not answer the submission in time, and then confirmed that it never will
    create it: nothing was made; the client may retry."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the job store did not answer in time; {job_id} was not created")
        self.job_id = job_id


class OutcomeUnknown(Exception):
    """Redis answered neither the submission nor the check after it: the job may exist."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the job store did not answer; {job_id} may or may not have been created")
        self.job_id = job_id


class UnknownCursor(ValueError):
    """``after`` names no job in the listing."""


class DeleteOutcome(enum.Enum):
    MISSING = "missing"  # gone by the time the script ran (deleted meanwhile)
    DELETED = "deleted"  # record removed (a queued or running job cancelled with it)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    created: bool  # False when an Idempotency-Key named an earlier job
    # The new job as written and the unfinished jobs ahead of it, when this call wrote it
    # (None: read the job back).
    record: JobRecord | None = None
    jobs_ahead: int | None = None


@dataclass(frozen=True)
class Page:
    records: list[JobRecord]
    more: bool  # entries follow (a next page may still find them all gone: then it is empty)
    last_id: str | None  # where the next page starts; the last record's id when there is one


@dataclass(frozen=True)
class Deleted:
    outcome: DeleteOutcome
    was_active: bool = False  # it was queued or running: its worker stops, nothing is kept
    files: tuple[str, ...] = ()


class JobQueue:
    """Job records and streams under ``settings.key_prefix`` in one Redis database."""

    def __init__(self, redis: aioredis.Redis, settings: ServiceSettings) -> None:
        self._redis = redis
        self._settings = settings
        self.keys = Keys(settings.key_prefix)
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._delete = redis.register_script(scripts.DELETE)
        self._settle = redis.register_script(scripts.SETTLE)
        self._read = redis.register_script(scripts.READ)
        # model → (the published text, what it parsed to): parse a model's rules once.
        self._rules_cache: dict[str, tuple[str, EngineRules | None]] = {}
        # model → (when they were read, monotonic s; the rules then)
        self._rules_read: dict[str, tuple[float, EngineRules | None]] = {}

    async def ensure_groups(self, models: Sequence[str]) -> None:
        """Create each model's stream and consumer group (reading from the first entry)."""
        for model in models:
            try:
                await self._redis.xgroup_create(
                    self.keys.stream(model), GROUP, id="0", mkstream=True
                )
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def submit(
        self,
        model: str,
        request: GenerationRequest,
        *,
        seconds: str,
        owner: str = "",
        idempotency_key: str | None = None,
        job_id: str | None = None,
        remixed_from: str | None = None,
        webhook_url: str | None = None,
    ) -> Submitted:
        """Write the job hash and its stream entry in one script; raise ``QueueFull``, or
        ``KeyQuotaReached`` when ``owner`` has ``max_jobs_per_key`` unfinished jobs of ``model``
        (an owner "", no API keys, has no such limit).
        ``owner`` (the API key's digest) owns the job and scopes ``idempotency_key``: the same
        key with the same request is the job made the first time; with another request,
        ``IdempotencyConflict``; once that job is gone (deleted, or past retention), the key is
        free for a new job. Sending the same ``job_id`` again (a retry) creates nothing more.
        ``remixed_from``: the source job of a remix; ``webhook_url``: where the job's end is
        announced (both are part of what makes two submissions the same request)."""
        job_id = job_id or new_job_id()
        created = created_ms_of(job_id)
        idem_key = self.keys.idempotency(_idempotency_digest(owner, idempotency_key))
        request_json = request_to_json(request)
        fields = {
            JobField.ID: job_id,
            JobField.MODEL: model,
            JobField.OWNER: owner,
            JobField.STATUS: JobStatus.QUEUED,
            JobField.REQUEST: request_json,
            JobField.CREATED_AT: created,
            JobField.QUEUE_DEADLINE: created + self._settings.queued_ttl_s * 1000,
            JobField.ATTEMPT: 0,
            JobField.HANDBACKS: 0,
            JobField.STEPS_DONE: 0,
            JobField.STEPS_TOTAL: request.num_inference_steps,
            JobField.SECONDS: seconds,
        }
        # Written only when set: most jobs carry none of them.
        optional = {
            JobField.REMIXED_FROM: remixed_from,
            JobField.WEBHOOK_URL: webhook_url,
            JobField.IDEMPOTENCY_KEY: idem_key if idempotency_key else None,
        }
        fields |= {name: value for name, value in optional.items() if value}
        args: list[str | int] = [
            job_id,
            created,
            self._settings.max_queue_depth,
            # A key is remembered as long as its job can exist: queued, then retained.
            self._settings.queued_ttl_s + self._settings.retention_s,
            "1" if idempotency_key else "0",
            GROUP,
            _fingerprint(model, request_json, seconds, remixed_from or "", webhook_url or ""),
            self.keys.job(""),
            owner,
            self._settings.max_jobs_per_key if owner else 0,
        ]
        for name, value in fields.items():
            args += [str(name), str(value)]
        keys = [
            self.keys.job(job_id),
            self.keys.jobs,
            self.keys.stream(model),
            idem_key,
            self.keys.owner_jobs(owner),
        ]
        keys += [self.keys.abandoned(job_id), self.keys.unfinished(model)]
        try:
            reply: Any = await self._enqueue(keys=keys, args=args)
        except (RedisTimeoutError, RedisConnectionError) as error:
            logger.warning("submission %s unanswered (%s); settling it", job_id, error)
            reply = [await self._settled(job_id), job_id]
        outcome, value = reply[0], reply[1]
        if outcome == "full":
            raise QueueFull(model, int(value))
        if outcome == "over_quota":
            raise KeyQuotaReached(model, int(value), self._settings.max_jobs_per_key)
        if outcome == "abandoned":
            raise NotCreated(job_id)
        if outcome == "existing":
            return Submitted(job_id=value, created=False)
        if outcome == "conflict":
            raise IdempotencyConflict(idempotency_key or "", value)
        # Created, by this call or by an earlier run of it: answer from what was written, so
        # that no further read (which could fail) stands between the job and its answer.
        written = {str(name): str(field) for name, field in fields.items()}
        if len(reply) == 4:
            record = JobRecord.from_hash({**written, JobField.STREAM_ID: reply[3]})
            return Submitted(job_id=job_id, created=True, record=record, jobs_ahead=int(reply[2]))
        return Submitted(job_id=job_id, created=True, record=JobRecord.from_hash(written))

    async def _settled(self, job_id: str) -> str:
        """'created' or 'abandoned' for a submission whose answer was lost, asking until one
        answer comes or ``SETTLE_ATTEMPTS`` calls went unanswered (then ``OutcomeUnknown``)."""
        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                outcome: Any = await self._settle(
                    keys=[self.keys.job(job_id), self.keys.abandoned(job_id)],
                    args=[TOMBSTONE_TTL_S],
                )
                return str(outcome)
            except (RedisTimeoutError, RedisConnectionError) as error:
                logger.warning("settling %s, attempt %d: %s", job_id, attempt, error)
        raise OutcomeUnknown(job_id)

    async def read(self, job_id: str, ahead_cap: int) -> tuple[JobRecord, int | None] | None:
        """The job and, while it is queued, the unfinished jobs of its model whose stream
        entries precede its own, counted up to ``ahead_cap``, in one call; None when there is
        no such job. Finished and cancelled entries are deleted from the stream, so the entries
        before this one are exactly the jobs running or waiting ahead of it; counting them is
        one bounded XRANGE, whatever the queue's depth."""
        reply: Any = await self._read(
            keys=[self.keys.job(job_id)], args=[ahead_cap, self.keys.stream("")]
        )
        if not reply:
            return None
        ahead, flat = int(reply[0]), reply[1:]
        record = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        return record, (ahead if ahead >= 0 else None)

    async def get(self, job_id: str) -> JobRecord | None:
        fields = cast(dict[str, str], await self._redis.hgetall(self.keys.job(job_id)))
        return JobRecord.from_hash(fields) if fields else None

    async def page(
        self, *, owner: str | None, after: str | None, limit: int, descending: bool
    ) -> Page:
        """One page of ``owner``'s jobs (None: everyone's) by creation time after the job
        ``after`` (any job id, even one since deleted: ids carry their creation time). Entries
        whose job is gone are dropped as they are met and the page is filled past them, so a
        page is empty only at the end of the listing."""
        index = self.keys.jobs if owner is None else self.keys.owner_jobs(owner)
        position = None if after is None else await self._position(index, after)
        records: list[JobRecord] = []
        more = False
        for _ in range(MAX_LIST_BATCHES):
            need = limit - len(records)
            entries = await self._entries_after(index, position, need + 1, descending)
            batch, more = entries[:need], len(entries) > need
            if not batch:
                break
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id, _ in batch:
                    pipe.hgetall(self.keys.job(job_id))
                hashes = await pipe.execute()
            gone = []
            for (job_id, _), fields in zip(batch, hashes, strict=True):
                if fields:
                    records.append(JobRecord.from_hash(fields))
                else:
                    gone.append(job_id)
            if gone:
                # Past retention (the janitor drops them too) or deleted meanwhile.
                await self._redis.zrem(index, *gone)
            position = (batch[-1][1], batch[-1][0])
            if len(records) == limit or not more:
                break
        last = records[-1].id if records else (position[1] if more and position else None)
        return Page(records=records, more=more, last_id=last)

    async def _position(self, index: str, after: str) -> tuple[int, str]:
        score: Any = await self._redis.zscore(index, after)
        if score is not None:
            return int(score), after
        if is_job_id(after):
            created = created_ms_of(after)
            if EARLIEST_ID_MS <= created <= now_ms() + 86_400_000:
                return created, after
        raise UnknownCursor(f"after={after!r} is not a job id of this service")

    async def _entries_after(
        self, index: str, position: tuple[int, str] | None, count: int, descending: bool
    ) -> list[tuple[str, int]]:
        """Up to ``count`` (job id, score) after ``position`` in listing order: by score, then
        by id among equal scores (Redis's own order)."""
        if position is None:
            first: Any = await self._redis.zrange(
                index, 0, count - 1, desc=descending, withscores=True
            )
            return [(job_id, int(score)) for job_id, score in first]
        score, job_id = position
        ties: Any = await self._redis.zrange(index, score, score, byscore=True)
        later = [t for t in ties if (t < job_id if descending else t > job_id)]
        later = sorted(later, reverse=descending)[:count]
        bound = f"({score}"
        rest: Any = await self._redis.zrange(
            index,
            bound,
            "-inf" if descending else "+inf",
            desc=descending,
            byscore=True,
            offset=0,
            num=count - len(later),
            withscores=True,
        )
        return [(t, score) for t in later] + [(t, int(s)) for t, s in rest]

    async def delete(self, record: JobRecord) -> Deleted:
        """Delete the job in one step whatever its state: a queued or running one is cancelled
        with it (its worker stops at its next step); the files to delete are returned."""
        result = await self._delete(
            keys=[
                self.keys.job(record.id),
                self.keys.stream(record.model),
                self.keys.jobs,
                self.keys.owner_jobs(record.owner),
                self.keys.expiring,
                self.keys.events(record.id),
                self.keys.unfinished(record.model),
            ],
            args=[record.id, GROUP, EVENTS_LINGER_MS],
        )
        outcome = DeleteOutcome(result[0])
        if outcome is DeleteOutcome.MISSING:
            return Deleted(outcome=outcome)
        files = tuple(path for path in result[2:] if path)
        return Deleted(outcome=outcome, was_active=result[1] == "1", files=files)

    async def published_rules(self, models: Sequence[str]) -> dict[str, EngineRules]:
        """The request rules the models' workers published (one MGET); a model without any, or
        with a record this version cannot read, is left out."""
        raw: Any = await self._redis.mget([self.keys.rules(model) for model in models])
        rules: dict[str, EngineRules] = {}
        for model, text in zip(models, raw, strict=True):
            parsed = self._parse_rules(model, text)
            if parsed is not None:
                rules[model] = parsed
        return rules

    async def rules_for(self, model: str) -> EngineRules | None:
        """The rules ``model``'s workers published, or None (no worker has started yet), as
        read at most ``RULES_MAX_AGE_S`` ago: a submission costs one Redis call, not two."""
        now = time.monotonic()
        fresh = self._rules_read.get(model)
        if fresh is not None and now - fresh[0] < RULES_MAX_AGE_S:
            return fresh[1]
        text: Any = await self._redis.get(self.keys.rules(model))
        rules = self._parse_rules(model, text)
        self._rules_read[model] = (now, rules)
        return rules

    def _parse_rules(self, model: str, text: str | None) -> EngineRules | None:
        if text is None:
            return None
        cached = self._rules_cache.get(model)
        if cached is not None and cached[0] == text:
            return cached[1]
        try:
            rules: EngineRules | None = EngineRules.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError) as error:
            logger.warning("unreadable rules of model %r ignored: %s", model, error)
            rules = None
        self._rules_cache[model] = (text, rules)
        return rules

    async def depth(self, model: str) -> int:
        """Unfinished jobs of ``model``: queued plus running (what ``max_queue_depth`` caps)."""
        return int(await self._redis.xlen(self.keys.stream(model)))

    async def unfinished_of(self, owner: str, model: str) -> int:
        """``owner``'s unfinished jobs of ``model`` (what ``max_jobs_per_key`` caps)."""
        count: Any = await self._redis.hget(self.keys.unfinished(model), owner)
        return int(count or 0)

    async def live_workers(self, model: str) -> int:
        """Workers of ``model`` that sent a heartbeat within the claim timeout."""
        since = time.time() - self._settings.claim_timeout_s
        return int(await self._redis.zcount(self.keys.workers(model), since, "+inf"))


def _fingerprint(model: str, request_json: str, seconds: str, *extra: str) -> str:
    """What makes two submissions the same request: the model and the request as the engine
    gets it (``request_to_json``: JSON or form, sent or defaulted fields alike), and ``extra``
    (a remix's source, the webhook URL) when given."""
    text = f"{model}\x00{seconds}\x00{request_json}"
    if any(extra):
        text += "\x00" + "\x00".join(extra)
    return hashlib.sha256(text.encode()).hexdigest()


def _idempotency_digest(owner: str, key: str | None) -> str:
    """Hash the client's key with its owner, so two clients' keys never collide."""
    return hashlib.sha256(f"{owner}\x00{key or ''}".encode()).hexdigest()
