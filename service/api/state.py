"""What the routes share: settings, the job queue, the Redis client, the metrics, the results."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis import asyncio as aioredis

from service.api.auth import Caller, KeyRing
from service.metrics import ApiMetrics
from service.queue.producer import JobQueue
from service.settings import ServiceSettings
from service.storage import ResultStore


@dataclass(frozen=True)
class ApiState:
    settings: ServiceSettings
    redis: aioredis.Redis
    queue: JobQueue
    metrics: ApiMetrics
    results: ResultStore
    keys: KeyRing
    started_at: int  # unix s, reported as the models' ``created``


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def current_caller(request: Request) -> Caller:
    """Dependency of every ``/v1`` route: authenticates, returns the caller (401 otherwise)."""
    return api_state(request).keys.authenticate(request)
