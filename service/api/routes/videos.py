"""``/v1/videos`` (the OpenAI Videos API) and ``/v1/jobs/{id}``; the live progress stream
``/v1/videos/{id}/events`` is in ``service.api.routes.events``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.auth import Caller
from service.api.content import content_response
from service.api.errors import (
    UNAUTHORIZED,
    UNKNOWN_ID,
    APIError,
    ErrorType,
    error_responses,
    from_validation_error,
)
from service.api.schemas import (
    QUEUE_POSITION_CAP,
    GenerationLimits,
    VideoCreateParams,
    VideoDeleted,
    VideoList,
    VideoObject,
    VideoRemixParams,
)
from service.api.state import ApiState, api_state, current_caller
from service.api.validation import ParamError, resolve_model, to_generation
from service.engine.types import GenerationRequest
from service.queue.producer import (
    DeleteOutcome,
    IdempotencyConflict,
    KeyQuotaReached,
    NotCreated,
    OutcomeUnknown,
    QueueFull,
    UnknownCursor,
)
from service.queue.records import JobRecord, JobStatus, is_job_id, new_job_id, now_ms
from service.storage import Variant
from service.webhooks.urls import WebhookUrlError, check_webhook_url

logger = logging.getLogger(__name__)
router = APIRouter(tags=["videos"])

POLL_HEADER = "openai-poll-after-ms"
_MAX_FORM_FIELDS = 32
_ERRORS = error_responses(
    (400, "Invalid field (the message names it and the allowed range)"),
    UNAUTHORIZED,
    UNKNOWN_ID,
    (503, "Job store unreachable or full; see Retry-After and the error code"),
)


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads JSON or form fields itself."""
    content = {"application/json": {"schema": schema}, "multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


_CREATE_BODY = _body(VideoCreateParams.model_json_schema())
_REMIX_BODY = _body(VideoRemixParams.model_json_schema())
_CREATE_ERRORS = _ERRORS | error_responses(
    (413, "Body over the size cap"),
    (415, "Body neither JSON nor a form"),
    (409, "Idempotency-Key reused with another request"),
    (429, "Queue full, or this key's unfinished jobs at QVGEN_MAX_JOBS_PER_KEY; see Retry-After"),
)


P = TypeVar("P", bound=BaseModel)


async def _read_params(request: Request, schema: type[P]) -> P:
    """``schema`` from a JSON object, validated strictly (a number field takes a JSON number,
    not ``true`` or ``"5"``), or from form fields (the SDK sends multipart: strings, converted);
    400 naming the first bad field."""
    try:
        if _content_type(request) == "application/json":
            raw = await request.body()
            _json_object(raw)
            return schema.model_validate_json(raw, strict=True)
        return schema.model_validate(await _read_form(request))
    except ValidationError as error:
        # pydantic's own JSON parser nests less deeply than Python's: what json.loads took may
        # still be refused here as malformed JSON (say, an array nested 500 deep in a field).
        first = error.errors()[0] if error.error_count() else None
        if first is not None and first["type"] == "json_invalid":
            raise APIError(
                400, f"body is not valid JSON: {first['msg']}", code="invalid_json"
            ) from error
        raise from_validation_error(error) from error


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json_object(raw: bytes) -> None:
    """400 unless ``raw`` is a JSON object, nested within the parser's depth."""
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


async def _read_form(request: Request) -> dict[str, Any]:
    """The fields of a form body (415 for any other content type but JSON)."""
    content_type = _content_type(request)
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


def _require_completed(record: JobRecord, why: str, param: str | None = None) -> None:
    """409 ``video_not_ready`` unless the job has completed (``why``: what needs it)."""
    if record.status is not JobStatus.COMPLETED:
        raise APIError(
            409,
            f"video {record.id} is {record.status.value}; {why}",
            param=param,
            code="video_not_ready",
        )


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
    params = await _read_params(request, VideoCreateParams)
    generation, model, seconds = await _generation(state, params)
    return await _submit(
        state,
        caller,
        _Submission(
            model, generation, seconds, await _webhook_url(state, caller, params.webhook_url)
        ),
        idempotency_key,
    )


@dataclass(frozen=True)
class _Submission:
    model: str
    generation: GenerationRequest
    seconds: str
    webhook_url: str | None
    remixed_from: str | None = None


async def _generation(
    state: ApiState, params: VideoCreateParams
) -> tuple[GenerationRequest, str, str]:
    """The engine request, the model and ``seconds`` for ``params``; 400 naming the field the
    model's limits refuse."""
    try:
        model = resolve_model(params, state.settings)
        limits = GenerationLimits.for_model(state.settings, await state.queue.rules_for(model))
        generation, seconds = to_generation(params, model, state.settings, limits)
    except ParamError as error:
        raise APIError(400, str(error), param=error.param, code="invalid_value") from error
    return generation, model, seconds


async def _webhook_url(state: ApiState, caller: Caller, requested: str | None) -> str | None:
    """Where the job's end is announced: the request's URL if it names one the caller's key
    may (else 400), or the deployment's ``webhook_url`` (None: nowhere). With per-key secrets,
    a key names hosts on its own list (else the global one: ``service.webhooks.tenants``) and
    only once it has a secret to verify the events with."""
    settings = state.settings
    if requested is None:
        return settings.webhook_url or None
    allowed = settings.webhook_allowed_hosts
    if settings.per_key_webhook_secrets and caller.owner:
        key = await state.webhook_keys.read(caller.owner)
        if not key.generation:
            raise APIError(
                400,
                "webhook_url: this API key has no webhook secret yet, so it could not verify "
                "its events; ask an operator for one (POST /v1/admin/webhooks/{owner}/secret)",
                param="webhook_url",
                code="webhook_secret_missing",
            )
        allowed = key.hosts_for(allowed)
    try:
        return check_webhook_url(requested, allowed, settings.webhook_policy())
    except WebhookUrlError as error:
        raise APIError(
            400, f"webhook_url: {error}", param="webhook_url", code="invalid_value"
        ) from error


async def _submit(
    state: ApiState,
    caller: Caller,
    job: _Submission,
    idempotency_key: str | None,
) -> Response:
    """Queue ``job``; the queue's refusals as the HTTP errors they are."""
    model = job.model
    try:
        submitted = await state.queue.submit(
            model,
            job.generation,
            seconds=job.seconds,
            owner=caller.owner,
            idempotency_key=idempotency_key,
            job_id=new_job_id(),
            remixed_from=job.remixed_from,
            webhook_url=job.webhook_url,
        )
    except (QueueFull, KeyQuotaReached) as error:
        state.metrics.jobs_rejected.labels(model).inc()
        retry_after = str(state.settings.queue_full_retry_after_s)
        own = isinstance(error, KeyQuotaReached)
        raise APIError(
            429,
            f"{error}; retry after {retry_after} s"
            + (", once some of them have finished" if own else ""),
            type=ErrorType.RATE_LIMIT,
            code="too_many_jobs_for_key" if own else "queue_full",
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


@router.post(
    "/v1/videos/{video_id}/remix",
    response_model=VideoObject,
    openapi_extra=_REMIX_BODY,
    responses=_CREATE_ERRORS | error_responses((409, "Source not completed")),
)
async def remix_video(
    video_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """A new job with the source's model, size, frames, fps, steps, guidance, negative prompt,
    seed, cache policy, cache threshold and guidance stop, and the new prompt;
    ``remixed_from_video_id`` names the source. The source must be one of the caller's (404
    otherwise) and completed (409 otherwise: as the SDK documents it, a remix is "of a completed
    video"). The new prompt is checked against the model's limits as a create's is (400 naming
    ``prompt``). Its ``webhook_url`` is its own or the deployment's, never the source's."""
    state = api_state(request)
    params = await _read_params(request, VideoRemixParams)
    source, _ = await _record_or_404(state, video_id, caller)
    _require_completed(source, "only a completed video can be remixed", param="video_id")
    generation, model, seconds = await _generation(state, _remix_params(source, params.prompt))
    job = _Submission(
        model,
        generation,
        seconds,
        await _webhook_url(state, caller, params.webhook_url),
        source.id,
    )
    return await _submit(state, caller, job, idempotency_key)


def _remix_params(source: JobRecord, prompt: str) -> VideoCreateParams:
    """The create request that makes ``source`` again, with ``prompt``: checked as any create
    against the limits in force now."""
    request = source.request
    return VideoCreateParams(
        prompt=prompt,
        model=source.model,
        size=f"{request.width}x{request.height}",
        num_frames=request.num_frames,
        fps=request.fps,
        negative_prompt=request.negative_prompt or None,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        seed=request.seed,
        cache=request.cache,
        cache_threshold=request.cache_threshold,
        guidance_stop=request.guidance_stop,
    )


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
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {variant.media_type: {} for variant in Variant}},
        206: {"description": "The byte range the Range header asked for"},
        307: {"description": "Redirect to the object store (QVGEN_CONTENT_DELIVERY=redirect)"},
        **error_responses((409, "Not completed yet"), (416, "Range outside the file")),
    },
)
async def download_video(
    video_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    variant: Variant = Variant.VIDEO,
) -> Response:
    """The MP4 (``variant=video``), its first frame as PNG (``variant=thumbnail``), or a JPEG
    grid of frames sampled over the clip (``variant=spritesheet``); streamed with byte ranges,
    or a redirect to the object store (``service.api.content``)."""
    state = api_state(request)
    record, _ = await _record_or_404(state, video_id, caller)
    _require_completed(record, "content exists once it is completed")
    refs = {
        Variant.VIDEO: record.video_path,
        Variant.THUMBNAIL: record.thumbnail_path,
        Variant.SPRITESHEET: record.spritesheet_path,
    }
    return await content_response(
        request, state.results, state.settings, refs[variant], variant, video_id
    )


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=_ERRORS)
async def delete_video(
    video_id: str, request: Request, caller: Annotated[Caller, Depends(current_caller)]
) -> VideoDeleted:
    """Delete the video in one call, whatever its state, as OpenAI's API does: a queued job
    never starts, a running one is stopped at its next step and whatever it still writes is
    discarded; the record, its listing entries, its Idempotency-Key and its files go. Then GET
    answers 404, and so does a second DELETE."""
    state = api_state(request)
    record, _ = await _record_or_404(state, video_id, caller)
    deleted = await state.queue.delete(record)
    if deleted.outcome is DeleteOutcome.MISSING:
        raise APIError(
            404, f"no video with id {video_id!r:.80}", type=ErrorType.NOT_FOUND, param="video_id"
        )
    if deleted.was_active:
        state.metrics.jobs_cancelled.labels(record.model).inc()
    await run_in_threadpool(state.results.delete_job, record.id, deleted.files)
    return VideoDeleted(id=video_id)
