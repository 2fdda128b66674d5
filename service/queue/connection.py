"""Redis clients of the API and of the workers, configured from the settings in one place.

redis-py retries a failed command by default (10 times, with backoff up to 10 s, on connection
errors and timeouts), which can run a command twice and hides an outage behind a long wait. Here:

- the API's client draws from a bounded blocking pool (``redis_max_connections``; a request
  waits up to ``redis_pool_timeout_s`` for a free connection instead of failing at once) and
  retries a command once, at once, only on a connection error: the first command on a pooled
  connection that a Redis restart broke. Every command and script the API sends is safe to run
  twice (the enqueue script is keyed by the job id the API made; a second delete finds nothing).
  A timeout is not retried: ``JobQueue.submit`` settles what became of the submission.
- a worker's client does not retry on its own: its loop, its heartbeat and its final writes each
  retry in their own way (``service.worker.runner``).
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.typing import EncodableT
from redis.utils import HIREDIS_AVAILABLE

from service.settings import ServiceSettings

# Seconds a pooled connection may sit idle before the pool checks it with a PING.
HEALTH_CHECK_INTERVAL_S = 30


class HiredisPackingConnection(aioredis.Connection):
    """A TCP connection that packs commands in C with hiredis. redis-py's asyncio connection
    packs them in Python even where hiredis is installed (its parser is used, its packer only by
    the sync client); the enqueue script's 40-odd arguments made that a tenth of a submission's
    API time."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        # redis-py annotates ``pack``'s arguments as lists; they are the command's words.
        packed: list[bytes] = cast(Any, self._serializer).pack(*args)
        return packed


def api_client(settings: ServiceSettings) -> aioredis.Redis:
    # A rediss:// or unix:// URL names its own connection class, which wins over this one.
    connection = HiredisPackingConnection if HIREDIS_AVAILABLE else aioredis.Connection
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        connection_class=connection,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)


def events_client(settings: ServiceSettings, longest_block_s: float) -> aioredis.Redis:
    """The API's pool for server-sent-event streams (``service.queue.events``): one connection
    per waiting stream, ``max_event_streams`` at most, kept apart from the request pool so that
    open streams never starve submissions. A read may block ``longest_block_s`` before its
    answer, so the socket waits that much longer than a command's timeout."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.max_event_streams,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_s + longest_block_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)


def worker_client(settings: ServiceSettings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(NoBackoff(), 0),
    )
