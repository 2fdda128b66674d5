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
from redis.exceptions import ResponseError

from service.engine.rules import EngineRules
from service.engine.types import GenerationRequest
from service.queue import scripts
from service.queue.keys import GROUP, Keys
from service.queue.records import (
    JobField,
    JobRecord,
    JobStatus,
    new_job_id,
    now_ms,
    request_to_json,
)
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The model's stream holds ``max_queue_depth`` unfinished jobs."""

    def __init__(self, model: str, depth: int) -> None:
        super().__init__(f"the queue of model {model!r} is full ({depth} unfinished jobs)")
        self.model = model
        self.depth = depth


class UnknownCursor(ValueError):
    """``after`` names no job in the listing."""


class CancelOutcome(enum.Enum):
    MISSING = "missing"  # gone by the time the script ran (deleted meanwhile)
    CANCELLED = "cancelled"  # was queued or running: now ``cancelled``, the worker stops
    DELETED = "deleted"  # was final: record removed, files to delete returned
    UNCHANGED = "unchanged"  # was queued or running when read, finished before the cancel


@dataclass(frozen=True)
class Submitted:
    job_id: str
    created: bool  # False when an Idempotency-Key named an earlier job


@dataclass(frozen=True)
class Cancelled:
    outcome: CancelOutcome
    files: tuple[str, ...] = ()


class JobQueue:
    """Job records and streams under ``settings.key_prefix`` in one Redis database."""

    def __init__(self, redis: aioredis.Redis, settings: ServiceSettings) -> None:
        self._redis = redis
        self._settings = settings
        self.keys = Keys(settings.key_prefix)
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._cancel = redis.register_script(scripts.CANCEL)
        # model → (the published text, what it parsed to): parse a model's rules once.
        self._rules_cache: dict[str, tuple[str, EngineRules | None]] = {}

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
    ) -> Submitted:
        """Write the job hash and its stream entry in one script; raise ``QueueFull``.
        ``owner`` (the API key's digest) owns the job and scopes ``idempotency_key``. Sending
        the same ``job_id`` again (a retry) creates nothing more."""
        job_id = job_id or new_job_id()
        created = now_ms()
        fields = {
            JobField.ID: job_id,
            JobField.MODEL: model,
            JobField.OWNER: owner,
            JobField.STATUS: JobStatus.QUEUED,
            JobField.REQUEST: request_to_json(request),
            JobField.CREATED_AT: created,
            JobField.QUEUE_DEADLINE: created + self._settings.queued_ttl_s * 1000,
            JobField.ATTEMPT: 0,
            JobField.HANDBACKS: 0,
            JobField.STEPS_DONE: 0,
            JobField.STEPS_TOTAL: request.num_inference_steps,
            JobField.SECONDS: seconds,
        }
        idem_key = self.keys.idempotency(_idempotency_digest(owner, idempotency_key))
        args: list[str | int] = [
            job_id,
            created,
            self._settings.max_queue_depth,
            self._settings.retention_s,
            "1" if idempotency_key else "0",
            GROUP,
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
        outcome, value = await self._enqueue(keys=keys, args=args)
        if outcome == "full":
            raise QueueFull(model, int(value))
        return Submitted(job_id=value, created=outcome == "created")

    async def get(self, job_id: str) -> JobRecord | None:
        fields = cast(dict[str, str], await self._redis.hgetall(self.keys.job(job_id)))
        return JobRecord.from_hash(fields) if fields else None

    async def list(
        self, *, owner: str | None, after: str | None, limit: int, descending: bool
    ) -> tuple[list[JobRecord], bool]:
        """One page of ``owner``'s jobs (None: everyone's) by creation time after the job
        ``after``; and whether more follow."""
        index = self.keys.jobs if owner is None else self.keys.owner_jobs(owner)
        start = 0
        if after is not None:
            rank: Any = await (
                self._redis.zrevrank(index, after)
                if descending
                else self._redis.zrank(index, after)
            )
            if rank is None:
                raise UnknownCursor(f"after={after!r} names no listed job")
            start = rank + 1
        ids: Any = await self._redis.zrange(index, start, start + limit, desc=descending)
        page, more = ids[:limit], len(ids) > limit
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in page:
                pipe.hgetall(self.keys.job(job_id))
            hashes = await pipe.execute()
        records, gone = [], []
        for job_id, fields in zip(page, hashes, strict=True):
            if fields:
                records.append(JobRecord.from_hash(fields))
            else:
                gone.append(job_id)
        if gone:
            # Their hashes expired at the end of retention; the listing forgets them lazily.
            await self._redis.zrem(index, *gone)
        return records, more

    async def cancel(self, record: JobRecord) -> Cancelled:
        """Cancel a job ``record`` shows queued or running; delete one it shows finished (its
        files are returned)."""
        result = await self._cancel(
            keys=[
                self.keys.job(record.id),
                self.keys.stream(record.model),
                self.keys.jobs,
                self.keys.owner_jobs(record.owner),
            ],
            args=[
                record.id,
                GROUP,
                now_ms(),
                self._settings.retention_s * 1000,
                record.status.value,
            ],
        )
        outcome = CancelOutcome(result[0])
        files = tuple(path for path in result[1:] if path)
        return Cancelled(outcome=outcome, files=files)

    async def jobs_ahead(self, record: JobRecord, cap: int) -> int:
        """Unfinished jobs of the record's model whose stream entries precede its own, counted
        up to ``cap``: finished and cancelled entries are deleted from the stream, so the entries
        before this one are exactly the jobs running or waiting ahead of it. One XRANGE of at
        most ``cap`` entries, whatever the queue's depth."""
        if record.stream_id is None:
            return 0
        ahead: Any = await self._redis.xrange(
            self.keys.stream(record.model), "-", f"({record.stream_id}", count=cap
        )
        return len(ahead)

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
        """The rules ``model``'s workers published, or None (no worker has started yet)."""
        text: Any = await self._redis.get(self.keys.rules(model))
        return self._parse_rules(model, text)

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

    async def live_workers(self, model: str) -> int:
        """Workers of ``model`` that sent a heartbeat within the claim timeout."""
        since = time.time() - self._settings.claim_timeout_s
        return int(await self._redis.zcount(self.keys.workers(model), since, "+inf"))


def _idempotency_digest(owner: str, key: str | None) -> str:
    """Hash the client's key with its owner, so two clients' keys never collide."""
    return hashlib.sha256(f"{owner}\x00{key or ''}".encode()).hexdigest()
