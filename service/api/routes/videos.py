"""``/v1/videos`` (the OpenAI Videos API) and ``/v1/jobs/{id}``."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from qvgen.video_io import THUMBNAIL_MEDIA_TYPE
from service.api.auth import Caller
from service.api.errors import APIError, ErrorBody, ErrorType, from_validation_error
from service.api.schemas import (
    QUEUE_POSITION_CAP,
    GenerationLimits,
    VideoCreateParams,
    VideoDeleted,
    VideoList,
    VideoObject,
)
from service.api.state import ApiState, api_state, current_caller
from service.api.validation import ParamError, resolve_model, to_generation
from service.queue.producer import (
    CancelOutcome,
    IdempotencyConflict,
    NotCreated,
    OutcomeUnknown,
    QueueFull,
    UnknownCursor,
)
from service.queue.records import JobRecord, JobStatus, is_job_id, new_job_id, now_ms

logger = logging.getLogger(__name__)
router = APIRouter(tags=["videos"])

POLL_HEADER = "openai-poll-after-ms"
_MAX_FORM_FIELDS = 32
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Invalid field (the message names it and the allowed range)"),
        (401, "Missing or wrong API key"),
        (404, "Unknown id"),
        (503, "Job store unreachable or full; see Retry-After and the error code"),
    )
}
_CREATE_SCHEMA = VideoCreateParams.model_json_schema()
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _CREATE_SCHEMA},
            "multipart/form-data": {"schema": _CREATE_SCHEMA},
        },
    }
}
_CREATE_ERRORS = {
    **_ERRORS,
    413: {"model": ErrorBody, "description": "Body over the size cap"},
    415: {"model": ErrorBody, "description": "Body neither JSON nor a form"},
    409: {"model": ErrorBody, "description": "Idempotency-Key reused with another request"},
    429: {"model": ErrorBody, "description": "Queue full; see Retry-After"},
}


async def _read_body(request: Request) -> dict[str, Any]:
    """The create fields from a JSON object or from form fields (the SDK sends multipart)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        raw = await request.body()
        try:
            body = json.loads(raw)
        except RecursionError as error:
            raise APIError(
                400, "body nests JSON arrays or objects too deeply", code="invalid_json"
            ) from error
        except ValueError as error:  # malformed JSON, bad UTF-8, an integer of > 4300 digits
            raise APIError(400, f"body is not valid JSON: {error}", code="invalid_json") from error
        if not isinstance(body, dict):
            raise APIError(400, "body must be a JSON object", code="invalid_json")
        return body
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        settings = api_state(request).settings
        async with request.form(
            max_files=1, max_fields=_MAX_FORM_FIELDS, max_part_size=settings.max_body_bytes
        ) as form:
            fields: dict[str, Any] = {}
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    raise APIError(
                        400,
                        f"file field {name!r} is not supported: this server generates from text",
                        param=name,
                        code="unsupported_parameter",
                    )
                fields[name] = value
            return fields
    raise APIError(
        415,
        f"content type {content_type or 'none'!r} is not accepted; send application/json "
        "or multipart/form-data",
        code="unsupported_media_type",
    )


def _video_object(record: JobRecord, jobs_ahead: int | None, state: ApiState) -> Response:
    """The video object as JSON, serialised here once: a returned ``Response`` is sent as it is,
    where a returned model is checked against ``response_model`` again and a sub-response made
    for the headers (the routes keep ``response_model`` for the OpenAPI schema)."""
    video = VideoObject.from_record(record, now_ms())
    if record.status is JobStatus.QUEUED and jobs_ahead is not None:
        video.queue_position = min(jobs_ahead, QUEUE_POSITION_CAP)
    headers = None if record.status.final else {POLL_HEADER: str(state.settings.poll_after_ms)}
    return Response(video.model_dump_json(), media_type="application/json", headers=headers)


async def _record_or_404(
    state: ApiState, video_id: str, caller: Caller
) -> tuple[JobRecord, int | None]:
    """The job (and the jobs ahead while it is queued), if it exists and ``caller`` may see it;
    another key's job is as unknown as one that never existed (404, never 403: its existence is
    not disclosed)."""
    found = await state.queue.read(video_id, QUEUE_POSITION_CAP) if is_job_id(video_id) else None
    if found is None or not caller.sees(found[0].owner):
        raise APIError(
            404, f"no video with id {video_id!r:.80}", type=ErrorType.NOT_FOUND, param="video_id"
        )
    return found


@router.post(
    "/v1/videos", response_model=VideoObject, openapi_extra=_CREATE_BODY, responses=_CREATE_ERRORS
)
async def create_video(
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Queue a text-to-video generation. Retrying with the same ``Idempotency-Key`` and the
    same request returns the job made the first time; the same key with another request is
    refused (409); a key whose job was deleted or expired makes a new job. A request outside
    the model's limits (``GET /v1/models``) is refused here with 400, never accepted to fail
    later."""
    state = api_state(request)
    try:
        params = VideoCreateParams.model_validate(await _read_body(request))
        model = resolve_model(params, state.settings)
        limits = GenerationLimits.for_model(state.settings, await state.queue.rules_for(model))
        generation, seconds = to_generation(params, model, state.settings, limits)
    except ValidationError as error:
        raise from_validation_error(error) from error
    except ParamError as error:
        raise APIError(400, str(error), param=error.param, code="invalid_value") from error
    try:
        submitted = await state.queue.submit(
            model,
            generation,
            seconds=seconds,
            owner=caller.owner,
            idempotency_key=idempotency_key,
            job_id=new_job_id(),
        )
    except QueueFull as error:
        state.metrics.jobs_rejected.labels(model).inc()
        retry_after = str(state.settings.queue_full_retry_after_s)
        raise APIError(
            429,
            f"{error}; retry after {retry_after} s",
            type=ErrorType.RATE_LIMIT,
            code="queue_full",
            headers={"Retry-After": retry_after},
        ) from error
    except IdempotencyConflict as error:
        raise APIError(
            409, str(error), param="Idempotency-Key", code="idempotency_key_reused"
        ) from error
    except (NotCreated, OutcomeUnknown) as error:
        unknown = isinstance(error, OutcomeUnknown)
        advice = (
            f"GET /v1/videos/{error.job_id} shows it if it exists; retry with an "
            "Idempotency-Key to be sure of making one job"
            if unknown
            else "retry"
        )
        raise APIError(
            503,
            f"{error}; {advice}",
            type=ErrorType.SERVICE_UNAVAILABLE,
            code="job_state_unknown" if unknown else "job_not_created",
            headers={"Retry-After": "1"},
        ) from error
    if submitted.created:
        state.metrics.jobs_submitted.labels(model).inc()
    if submitted.record is None:
        return _video_object(*await _record_or_404(state, submitted.job_id, caller), state)
    return _video_object(submitted.record, submitted.jobs_ahead, state)


@router.get("/v1/videos", response_model=VideoList, responses=_ERRORS)
async def list_videos(
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> VideoList:
    """The caller's jobs by creation time, a page at a time; pass the page's ``last_id`` as
    ``after``. An admin key lists every key's jobs."""
    state = api_state(request)
    owner = None if caller.admin else caller.owner
    try:
        page = await state.queue.page(
            owner=owner, after=after, limit=limit, descending=order == "desc"
        )
    except UnknownCursor as error:
        raise APIError(400, str(error), param="after", code="invalid_value") from error
    now = now_ms()
    data = [VideoObject.from_record(record, now) for record in page.records]
    return VideoList(
        data=data, first_id=data[0].id if data else None, last_id=page.last_id, has_more=page.more
    )


@router.get("/v1/videos/{video_id}", response_model=VideoObject, responses=_ERRORS)
@router.get("/v1/jobs/{video_id}", response_model=VideoObject, responses=_ERRORS)
async def retrieve_video(
    video_id: str, request: Request, caller: Annotated[Caller, Depends(current_caller)]
) -> Response:
    """The video object; ``/v1/jobs/{id}`` answers the same."""
    state = api_state(request)
    return _video_object(*await _record_or_404(state, video_id, caller), state)


@router.get(
    "/v1/videos/{video_id}/content",
    response_class=FileResponse,
    responses={
        **_ERRORS,
        200: {"content": {"video/mp4": {}, THUMBNAIL_MEDIA_TYPE: {}}},
        409: {"model": ErrorBody, "description": "Not completed yet"},
    },
)
async def download_video(
    video_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    variant: Literal["video", "thumbnail"] = "video",
) -> FileResponse:
    """The MP4 (``variant=video``) or its first frame as PNG (``variant=thumbnail``)."""
    state = api_state(request)
    record, _ = await _record_or_404(state, video_id, caller)
    if record.status is not JobStatus.COMPLETED:
        raise APIError(
            409,
            f"video {video_id} is {record.status.value}; content exists once it is completed",
            code="video_not_ready",
        )
    stored = record.video_path if variant == "video" else record.thumbnail_path
    path = state.results.local_file(stored)
    if path is None:
        raise APIError(404, f"the {variant} of {video_id} is gone", type=ErrorType.NOT_FOUND)
    media_type = "video/mp4" if variant == "video" else THUMBNAIL_MEDIA_TYPE
    return FileResponse(path, media_type=media_type, filename=f"{video_id}{path.suffix}")


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=_ERRORS)
async def delete_video(
    video_id: str, request: Request, caller: Annotated[Caller, Depends(current_caller)]
) -> VideoDeleted:
    """Cancel a queued or running job (its worker stops at the next step); delete a finished
    job with its files. A cancelled job stays readable as ``cancelled`` until retention ends.
    A job that finished between the read and the cancel stays as it is: DELETE it again to
    delete it."""
    state = api_state(request)
    record, _ = await _record_or_404(state, video_id, caller)
    cancelled = await state.queue.cancel(record)
    if cancelled.outcome is CancelOutcome.CANCELLED:
        state.metrics.jobs_cancelled.labels(record.model).inc()
    if cancelled.outcome is CancelOutcome.DELETED:
        state.results.delete_job(record.id, cancelled.files)
    return VideoDeleted(id=video_id)
