"""``GET /v1/videos/{id}/events``: a job's progress as server-sent events, until it ends.

Each event carries the whole video object as ``GET /v1/videos/{id}`` answers it, named by its
status: ``video.queued`` (with ``queue_position``), ``video.in_progress`` (at the start and after
every step), then one of ``video.completed`` / ``video.failed`` / ``video.deleted`` (data: the
deletion object), after which the stream ends. The first event is the state at connection.

How it waits: on the job's event stream in Redis (``service.queue.events``), which the queue's
scripts append to at every change: no polling while the job runs. While it is queued, its
position changes with other jobs' progress, which its own stream does not record: the position
is read again every ``poll_after_ms`` (one bounded Redis call) and sent when it changed.

Reconnecting: the ``id`` of each event is its entry in the job's stream. Since every event
carries the whole object, a reconnect (with or without ``Last-Event-ID``) starts with the
current state, which stands for every event missed meanwhile; nothing needs replaying.

At most ``max_event_streams`` streams per API process (each holds a Redis connection while it
waits), and at most ``max_event_streams_per_key`` of them for one API key; one more is answered
429 with Retry-After, its code saying which cap it met.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from starlette.background import BackgroundTask

from service.api.auth import Caller
from service.api.errors import UNAUTHORIZED, UNKNOWN_ID, APIError, ErrorType, error_responses
from service.api.routes.videos import _record_or_404 as record_or_404
from service.api.schemas import QUEUE_POSITION_CAP, VideoDeleted, VideoObject
from service.api.state import ApiState, api_state, current_caller
from service.api.streams import KEEP_ALIVE, Slot, sse_event
from service.queue.events import DELETED, START_OF_STREAM
from service.queue.records import JobRecord, JobStatus, is_job_id, now_ms

logger = logging.getLogger(__name__)
router = APIRouter(tags=["videos"])

# How long a wait on a running job's stream lasts before a keep-alive comment (seconds).
RUNNING_WAIT_S = 15.0
STREAMS_FULL_RETRY_AFTER_S = 5
_EVENT_PREFIX = "video."


def _video(record: JobRecord, ahead: int | None) -> VideoObject:
    video = VideoObject.from_record(record, now_ms())
    if record.status is JobStatus.QUEUED and ahead is not None:
        video.queue_position = min(ahead, QUEUE_POSITION_CAP)
    return video


async def _events(
    state: ApiState, record: JobRecord, ahead: int | None, last_id: str, slot: Slot
) -> AsyncIterator[bytes]:
    job_id = record.id
    found: tuple[JobRecord, int | None] | None = (record, ahead)
    sent: tuple[object, ...] | None = None
    try:
        while True:
            if found is None:
                yield sse_event(_EVENT_PREFIX + DELETED, VideoDeleted(id=job_id).model_dump_json())
                return
            video = _video(*found)
            # Sent again only when it changed (its timings change with the clock alone).
            change = (video.status, video.steps_done, video.attempt, video.queue_position)
            if change != sent:
                yield sse_event(_EVENT_PREFIX + video.status, video.model_dump_json(), last_id)
                sent = change
            if found[0].status.final:
                return
            queued = found[0].status is JobStatus.QUEUED
            wait_ms = state.settings.poll_after_ms if queued else int(RUNNING_WAIT_S * 1000)
            events = await state.events.after(job_id, last_id, wait_ms)
            if events:
                last_id = events[-1].id
            elif not queued:
                yield KEEP_ALIVE
            # The entry id first, then the record: a change after this read is a later entry.
            found = await state.queue.read(job_id, QUEUE_POSITION_CAP)
    except RedisError as error:
        # Headers are sent: no error status can follow. Ending the stream makes the client
        # reconnect, and its reconnect gets a 503 with Retry-After until Redis is back.
        logger.warning("event stream of %s ended: Redis unreachable (%s)", job_id, error)
    finally:
        slot.release()


@router.get(
    "/v1/videos/{video_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **error_responses(
            (400, "Invalid header (Last-Event-ID over 64 chars)"),
            UNAUTHORIZED,
            UNKNOWN_ID,
            (429, "Too many open streams; see Retry-After"),
        ),
    },
)
async def video_events(
    video_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """The job's progress as server-sent events until it ends (module docstring: the events,
    and why ``Last-Event-ID`` needs no replay)."""
    state = api_state(request)
    # The stream's position before the record: the first wait starts from there.
    last_id = await state.events.last_id(video_id) if is_job_id(video_id) else START_OF_STREAM
    record, ahead = await record_or_404(state, video_id, caller)
    slots = state.stream_slots
    slot = slots.take(caller.owner)
    if slot is None:
        if slots.full():
            message = f"this server holds {slots.limit} event streams already"
            code = "too_many_streams"
        else:
            message = (
                f"this API key holds {slots.per_key} event streams already (the limit, "
                "max_event_streams_per_key)"
            )
            code = "too_many_streams_for_key"
        raise APIError(
            429,
            f"{message}; retry, or poll GET /v1/videos/{video_id}",
            type=ErrorType.RATE_LIMIT,
            code=code,
            headers={"Retry-After": str(STREAMS_FULL_RETRY_AFTER_S)},
        )
    # Given back when the stream ends, or after the response if the stream never started.
    return StreamingResponse(
        _events(state, record, ahead, last_id, slot),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(slot.release),
    )
