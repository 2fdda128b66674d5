"""Run the asyncio producer from synchronous tests, and build consumers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
from redis import asyncio as aioredis

from service.engine.types import GenerationRequest
from service.queue.consumer import Consumer
from service.queue.producer import JobQueue, Submitted
from service.settings import ServiceSettings

T = TypeVar("T")
REQUEST = GenerationRequest(prompt="a red ball", num_inference_steps=4, width=32, height=32)


def produce(settings: ServiceSettings, action: Callable[[JobQueue], Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            return await action(JobQueue(client, settings))
        finally:
            await client.aclose()

    return asyncio.run(main())


def submit(
    settings: ServiceSettings, key: str | None = None, owner: str = "", model: str = "tiny"
) -> Submitted:
    return produce(
        settings,
        lambda queue: queue.submit(model, REQUEST, seconds="2", owner=owner, idempotency_key=key),
    )


def consumer(
    client: redis.Redis, settings: ServiceSettings, name: str, model: str = "tiny"
) -> Consumer:
    made = Consumer(client, settings, model, name)
    made.ensure_group()
    return made
