"""Wires the FastAPI application: state, middleware, error handlers, routers."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import http_guard
from service.api.auth import KeyRing
from service.api.errors import install_error_handlers
from service.api.instrumentation import RequestTimer
from service.api.request_limits import BodyDeadline, BodySizeLimit, ConcurrencyLimit
from service.api.routes import docs, events, playground, system, videos, webhook_keys
from service.api.state import ApiState
from service.api.streams import StreamSlots
from service.metrics import ApiMetrics
from service.queue.connection import api_client, events_client
from service.queue.events import JobEvents
from service.queue.producer import JobQueue
from service.queue.redis_config import check_redis_async
from service.settings import ServiceSettings
from service.storage import open_store
from service.webhooks.tenants import KeyWebhookStore

logger = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    # This process's request-head limits (each process uvicorn forks builds its own app).
    http_guard.configure(settings)
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = api_client(settings)
        queue = JobQueue(client, settings)
        await check_redis_async(client, settings)
        await queue.ensure_groups(settings.models)
        app.state.api = ApiState(
            settings=settings,
            redis=client,
            queue=queue,
            metrics=metrics,
            results=open_store(settings),
            keys=KeyRing(settings),
            started_at=int(time.time()),
            events=JobEvents(events_client(settings, events.RUNNING_WAIT_S), queue.keys),
            stream_slots=StreamSlots(
                settings.max_event_streams, settings.max_event_streams_per_key
            ),
            webhook_keys=KeyWebhookStore(client, queue.keys),
        )
        shared = settings.api_keys and not settings.per_key_webhook_secrets
        if shared and settings.webhook_allowed_hosts:  # production refuses it (settings)
            logger.warning(
                "API keys share one webhook secret (QVGEN_WEBHOOK_SECRET): each key that "
                "verifies its webhooks could forge another's; set QVGEN_WEBHOOK_MASTER_SECRET"
            )
        logger.info(
            "API ready: models %s, redis %s, %d API keys, %d admin keys",
            list(settings.models),
            settings.redis_url,
            len(settings.api_keys),
            len(settings.admin_api_keys),
        )
        try:
            yield
        finally:
            await app.state.api.events.aclose()
            await client.aclose()

    app = FastAPI(
        title="qvgen video generation",
        version="1",
        description="OpenAI-compatible /v1/videos backed by a Redis Streams job queue.",
        lifespan=lifespan,
        # Served by routes.docs as settings.api_docs says.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(videos.router)
    app.include_router(events.router)
    app.include_router(system.router)
    app.include_router(webhook_keys.router)
    app.include_router(playground.router)
    docs_router = docs.router_for(app, settings.api_docs)
    if docs_router is not None:
        app.include_router(docs_router)
    # Added last = outermost: the timer sees every answer, the body cap runs before any route
    # and, with the body deadline, bounds what the in-flight caps read of a request they refuse.
    app.add_middleware(
        ConcurrencyLimit,
        max_requests=settings.max_concurrent_requests,
        per_key=settings.max_concurrent_requests_per_key,
        keys=KeyRing(settings),
    )
    app.add_middleware(BodyDeadline, timeout_s=settings.http_body_timeout_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTimer, metrics=metrics)
    return app
