"""Checks that the Redis server is configured so that no accepted job can vanish.

``maxmemory-policy`` must be ``noeviction``: any evicting policy may drop a job hash or a stream
under memory pressure, and the job would be lost without a trace. Writes then fail loudly
instead (the API answers 503) — the right failure for a queue.

Durability is the operator's choice, documented in ``service/queue/redis.conf``: AOF with
``appendfsync everysec`` loses at most about a second of acknowledged submissions on a crash of
the Redis host; ``appendfsync always`` loses none at a cost in write latency. The stock
configuration (RDB snapshots only) can lose minutes, so it is reported here.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis import asyncio as aioredis
from redis.exceptions import ResponseError

from service.settings import Environment, ServiceSettings

logger = logging.getLogger(__name__)


class UnsafeRedisConfig(RuntimeError):
    pass


def _judge(config: dict[str, Any], settings: ServiceSettings) -> None:
    policy = config.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        message = (
            f"Redis maxmemory-policy is {policy!r}: jobs can be evicted; set it to 'noeviction'"
        )
        if settings.environment is Environment.PRODUCTION:
            raise UnsafeRedisConfig(message)
        logger.warning(message)
    if config.get("appendonly") == "no":
        logger.warning(
            "Redis runs without AOF (appendonly no): a Redis crash loses recent jobs; "
            "see service/queue/redis.conf"
        )


def _config_or_empty(reply: Any) -> dict[str, Any]:
    return dict(reply) if isinstance(reply, dict) else {}


async def check_redis_async(client: aioredis.Redis, settings: ServiceSettings) -> None:
    config: dict[str, Any] = {}
    try:
        for name in ("maxmemory-policy", "appendonly"):
            config |= _config_or_empty(await client.config_get(name))
    except ResponseError:
        logger.info("CONFIG GET is disabled on this Redis; not checking its eviction policy")
        return
    _judge(config, settings)


def check_redis(client: redis.Redis, settings: ServiceSettings) -> None:
    config: dict[str, Any] = {}
    try:
        for name in ("maxmemory-policy", "appendonly"):
            config |= _config_or_empty(client.config_get(name))
    except ResponseError:
        logger.info("CONFIG GET is disabled on this Redis; not checking its eviction policy")
        return
    _judge(config, settings)
