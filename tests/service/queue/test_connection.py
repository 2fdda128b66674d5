"""The API's Redis client: commands packed by hiredis go out as redis-py would send them, and a
submission's request is encoded as it always was."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from redis import asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from service.engine.types import GenerationRequest
from service.queue.connection import HiredisPackingConnection, api_client
from service.queue.records import request_to_json
from service.settings import ServiceSettings

# A command of every kind of word the API sends: a two-word command name, ints, non-ASCII text,
# a value past redis-py's chunking cutoff (6000 bytes), bytes.
_COMMAND = ("SCRIPT LOAD", "key", 7, -1, "prompt: café ☕", "x" * 7000, b"\x00raw", 2.5)


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
def test_hiredis_packing_sends_the_bytes_redis_py_would() -> None:
    python, packed = aioredis.Connection(), HiredisPackingConnection()
    assert b"".join(packed.pack_command(*_COMMAND)) == b"".join(python.pack_command(*_COMMAND))


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
def test_the_api_client_round_trips_a_long_script_call(settings: ServiceSettings) -> None:
    async def echo() -> object:
        client = api_client(settings)
        try:
            connection = await client.connection_pool.get_connection()
            assert isinstance(connection, HiredisPackingConnection)
            await client.connection_pool.release(connection)
            script = client.register_script("return ARGV")
            return await script(keys=["k"], args=[f"v{i} é" for i in range(40)])
        finally:
            await client.aclose()

    assert asyncio.run(echo()) == [f"v{i} é" for i in range(40)]


def test_request_json_is_the_sorted_compact_json_of_its_fields() -> None:
    """Stored idempotency fingerprints hash this text: it must not change between versions."""
    request = GenerationRequest(prompt="a cat ☕", negative_prompt="blur", seed=7, fps=12)
    expected = json.dumps(dataclasses.asdict(request), separators=(",", ":"), sort_keys=True)
    assert request_to_json(request) == expected
