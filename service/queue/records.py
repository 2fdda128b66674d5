"""The job record: what the ``P:job:<id>`` hash holds, and how it reads back into Python.

A job moves ``queued → in_progress → completed | failed | cancelled``; a crash or a SIGTERM
hand-back moves it from ``in_progress`` back to ``queued`` under the same id. ``attempt`` counts
the starts; every write a worker makes names its attempt and is refused when a newer attempt has
begun (fencing). Times are unix milliseconds.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from service.engine.types import GenerationRequest

JOB_ID_PREFIX = "video_"
# 32 hex digits: the creation time (unix ms, 12 digits) then 80 random bits. Safe as a file name
# and a Redis key; unguessable (and a job answers only its owner's key). The time makes any id
# a position in the listing, even once its job is gone: paging never loses its place.
_JOB_ID_RE = re.compile(r"^video_[0-9a-f]{32}$")
_TIME_DIGITS = 12


def now_ms() -> int:
    """Unix time in milliseconds: the unit of every time in a job record."""
    return time.time_ns() // 1_000_000


def new_job_id(created_ms: int | None = None) -> str:
    created = now_ms() if created_ms is None else created_ms
    return f"{JOB_ID_PREFIX}{created:0{_TIME_DIGITS}x}{secrets.token_hex(10)}"


def created_ms_of(job_id: str) -> int:
    """The creation time an id made by ``new_job_id`` carries (ids made before it carry noise;
    their jobs are found by their listing score instead)."""
    return int(job_id[len(JOB_ID_PREFIX) : len(JOB_ID_PREFIX) + _TIME_DIGITS], 16)


def is_job_id(value: str) -> bool:
    return _JOB_ID_RE.fullmatch(value) is not None


WEBHOOK_EVENT_PREFIX = "evt_"


def webhook_event_id(job_id: str) -> str:
    """The id of the one webhook event a job's end makes (the scripts build the same one): the
    same on every delivery attempt, so that a receiver deduplicates by it."""
    return WEBHOOK_EVENT_PREFIX + job_id[len(JOB_ID_PREFIX) :]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class ErrorCode(enum.StrEnum):
    """``error.code`` of a failed job."""

    INVALID_REQUEST = "invalid_request"
    ENGINE_ERROR = "engine_error"
    EXPIRED = "expired"
    MAX_DELIVERIES = "max_deliveries_exceeded"


class JobField(enum.StrEnum):
    """Field names of the job hash (the Lua scripts in ``scripts`` use the same literals)."""

    ID = "id"
    MODEL = "model"
    OWNER = "owner"
    STATUS = "status"
    REQUEST = "request"
    SECONDS = "seconds"
    CREATED_AT = "created_at"
    QUEUE_DEADLINE = "queue_deadline"
    STARTED_AT = "started_at"
    ATTEMPT_STARTED_AT = "attempt_started_at"
    COMPLETED_AT = "completed_at"
    EXPIRES_AT = "expires_at"
    ATTEMPT = "attempt"
    HANDBACKS = "handbacks"
    STEPS_DONE = "steps_done"
    STEPS_TOTAL = "steps_total"
    WORKER = "worker"
    STREAM_ID = "stream_id"
    ERROR_CODE = "error_code"
    ERROR_MESSAGE = "error_message"
    VIDEO_PATH = "video_path"
    THUMBNAIL_PATH = "thumbnail_path"
    REMIXED_FROM = "remixed_from"  # the source job of a remix ("" otherwise)
    WEBHOOK_URL = "webhook_url"  # where video.completed / video.failed go ("" for nowhere)
    IDEMPOTENCY_KEY = "idempotency_key"  # the Redis key naming this job, deleted with it
    SPRITESHEET_PATH = "spritesheet_path"
    # Written at completion: the generation's full transformer passes, and those its cache and
    # guidance policies saved (``service.engine.types.GenerationStats``).
    TRANSFORMER_PASSES = "transformer_passes"
    TRANSFORMER_PASSES_SAVED = "transformer_passes_saved"


# The request's field names, sorted: its JSON is the same text whatever order they are declared.
_REQUEST_FIELDS = tuple(sorted(field.name for field in dataclasses.fields(GenerationRequest)))


def request_to_json(request: GenerationRequest) -> str:
    """Compact JSON with sorted keys. Its fields are scalars, read directly: ``asdict`` would
    deep-copy each one, a tenth of a submission's API time."""
    return json.dumps(
        {name: getattr(request, name) for name in _REQUEST_FIELDS}, separators=(",", ":")
    )


def request_from_json(text: str) -> GenerationRequest:
    return GenerationRequest(**json.loads(text))


@dataclass(frozen=True)
class JobRecord:
    """One job as read from its hash."""

    id: str
    model: str
    status: JobStatus
    request: GenerationRequest
    seconds: str
    created_at_ms: int
    queue_deadline_ms: int
    started_at_ms: int | None
    attempt_started_at_ms: int | None
    completed_at_ms: int | None
    expires_at_ms: int | None
    attempt: int
    steps_done: int
    steps_total: int
    worker: str | None
    error_code: str | None
    error_message: str | None
    video_path: str | None
    thumbnail_path: str | None
    stream_id: str | None = None  # the job's entry in its model's stream
    owner: str = ""  # digest of the API key that created it; "" without keys
    remixed_from: str | None = None
    webhook_url: str | None = None
    spritesheet_path: str | None = None  # None for jobs completed before spritesheets
    # None until completed (and for jobs completed before the counts were stored).
    transformer_passes: int | None = None
    transformer_passes_saved: int | None = None

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> JobRecord:
        def opt_int(name: JobField) -> int | None:
            value = fields.get(name)
            return int(value) if value not in (None, "") else None

        def opt_str(name: JobField) -> str | None:
            value = fields.get(name)
            return value if value else None

        request = request_from_json(fields[JobField.REQUEST])
        return cls(
            id=fields[JobField.ID],
            model=fields[JobField.MODEL],
            status=JobStatus(fields[JobField.STATUS]),
            request=request,
            seconds=fields.get(JobField.SECONDS, ""),
            created_at_ms=int(fields[JobField.CREATED_AT]),
            queue_deadline_ms=int(fields[JobField.QUEUE_DEADLINE]),
            started_at_ms=opt_int(JobField.STARTED_AT),
            attempt_started_at_ms=opt_int(JobField.ATTEMPT_STARTED_AT),
            completed_at_ms=opt_int(JobField.COMPLETED_AT),
            expires_at_ms=opt_int(JobField.EXPIRES_AT),
            attempt=int(fields.get(JobField.ATTEMPT, "0")),
            steps_done=int(fields.get(JobField.STEPS_DONE, "0")),
            steps_total=int(fields.get(JobField.STEPS_TOTAL) or request.num_inference_steps),
            worker=opt_str(JobField.WORKER),
            error_code=opt_str(JobField.ERROR_CODE),
            error_message=opt_str(JobField.ERROR_MESSAGE),
            video_path=opt_str(JobField.VIDEO_PATH),
            thumbnail_path=opt_str(JobField.THUMBNAIL_PATH),
            stream_id=opt_str(JobField.STREAM_ID),
            owner=fields.get(JobField.OWNER, ""),
            remixed_from=opt_str(JobField.REMIXED_FROM),
            webhook_url=opt_str(JobField.WEBHOOK_URL),
            spritesheet_path=opt_str(JobField.SPRITESHEET_PATH),
            transformer_passes=opt_int(JobField.TRANSFORMER_PASSES),
            transformer_passes_saved=opt_int(JobField.TRANSFORMER_PASSES_SAVED),
        )

    @property
    def progress(self) -> int:
        """Integer percent: ⌊100 · steps_done / steps_total⌋, 100 once completed."""
        if self.status is JobStatus.COMPLETED:
            return 100
        if self.steps_total <= 0:
            return 0
        return min(99, (100 * self.steps_done) // self.steps_total)
