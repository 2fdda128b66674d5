"""Liveness, readiness, metrics and the model list."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from service.api.auth import Caller
from service.api.errors import UNAUTHORIZED, APIError, ErrorType, error_responses
from service.api.schemas import GenerationLimits, Health, ModelList, ModelObject, Readiness
from service.api.state import api_state, current_caller
from service.settings import MetricsAccess

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["system"])
async def healthz() -> Health:
    """Liveness: the process answers. Says nothing of Redis or workers."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Redis down or a model has no worker"}},
    tags=["system"],
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: Redis answers and every served model has a live worker."""
    state = api_state(request)
    workers: dict[str, int] = {}
    try:
        await asyncio.wait_for(state.redis.ping(), timeout=2)
        for model in state.settings.models:
            workers[model] = await state.queue.live_workers(model)
        reachable = True
    except (RedisError, TimeoutError):
        reachable = False
    ready = reachable and all(workers.get(m, 0) > 0 for m in state.settings.models)
    body = Readiness(status="ready" if ready else "not_ready", redis=reachable, workers=workers)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses=error_responses(UNAUTHORIZED, (403, "Not an admin key (QVGEN_METRICS_ACCESS=admin)")),
    tags=["system"],
)
async def metrics(request: Request) -> Response:
    """Prometheus text format; queue depth and live workers are read from Redis now. With keys
    on, an admin key is required unless ``metrics_access`` is ``public``: the series show every
    tenant's volume."""
    state = api_state(request)
    if state.settings.metrics_access is MetricsAccess.ADMIN:
        caller = state.keys.authenticate(request)
        if not caller.admin:
            raise APIError(
                403,
                "/metrics needs an admin key (QVGEN_ADMIN_API_KEYS), or "
                "QVGEN_METRICS_ACCESS=public where the network is private",
                type=ErrorType.AUTHENTICATION,
                code="admin_key_required",
            )
    try:
        for model in state.settings.models:
            state.metrics.queue_depth.labels(model).set(await state.queue.depth(model))
            state.metrics.workers_alive.labels(model).set(await state.queue.live_workers(model))
    except RedisError:
        pass  # the gauges keep their last values; readiness reports the outage
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, tags=["models"])
async def list_models(request: Request, _: Annotated[Caller, Depends(current_caller)]) -> ModelList:
    """The served models, each with the limits ``POST /v1/videos`` applies (``limits``)."""
    state = api_state(request)
    models = state.settings.models
    try:
        rules = await state.queue.published_rules(models)
    except RedisError:
        rules = {}  # the list still answers; limits fall back to the API's own bounds
    return ModelList(
        data=[
            ModelObject(
                id=model,
                created=state.started_at,
                limits=GenerationLimits.for_model(state.settings, rules.get(model)),
            )
            for model in models
        ]
    )
