"""What the routes share: settings, the job queue, the Redis clients, the metrics, the results."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis import asyncio as aioredis

from service.api.auth import Caller, KeyRing
from service.api.streams import StreamSlots
from service.metrics import ApiMetrics
from service.queue.events import JobEvents
from service.queue.producer import JobQueue
from service.settings import ServiceSettings
from service.storage import ResultStore
from service.webhooks.tenants import KeyWebhookStore


@dataclass(frozen=True)
class ApiState:
    settings: ServiceSettings
    redis: aioredis.Redis
    queue: JobQueue
    metrics: ApiMetrics
    results: ResultStore
    keys: KeyRing
    started_at: int  # unix s, reported as the models' ``created``
    events: JobEvents  # the jobs' event streams, on a pool of their own
    stream_slots: StreamSlots  # open /events streams of this process
    webhook_keys: KeyWebhookStore  # each API key's webhook secret generation and hosts


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def current_caller(request: Request) -> Caller:
    """Dependency of every ``/v1`` route: authenticates, returns the caller (401 otherwise).
    A coroutine, so that FastAPI runs it on the event loop rather than in its thread pool."""
    return api_state(request).keys.authenticate(request)
