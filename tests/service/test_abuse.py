"""Abuse: a submission flood against a small queue, and schemathesis over /openapi.json.

Both against a real uvicorn API process and a real Redis.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from benchmarks.service import Cluster
from service.api.main import create_app
from service.queue.consumer import Consumer
from service.queue.keys import Keys
from service.settings import ServiceSettings
from tests.service.cluster_fixtures import API_KEY, MODEL, auth, start_cluster
from tests.service.redis_fixtures import redis_server

__all__ = ["redis_server"]

QUEUE_CAP = 20


@pytest.fixture(scope="module")
def small_queue(
    redis_server: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, ServiceSettings]]:
    results = tmp_path_factory.mktemp("abuse") / "results"
    running, service_settings = start_cluster(
        redis_server.url,  # type: ignore[attr-defined]
        results,
        max_queue_depth=QUEUE_CAP,
        max_body_bytes=64 * 1024,
    )
    try:
        yield running, service_settings
    finally:
        running.stop()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def _flood(base_url: str, requests: int, concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    body = {"prompt": "flood " * 100, "model": MODEL}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def one() -> httpx.Response:
            async with gate:
                return await client.post("/v1/videos", json=body, headers=auth())

        return list(await asyncio.gather(*(one() for _ in range(requests))))


def test_flood_gets_429_never_5xx_and_memory_stays_bounded(
    small_queue: tuple[Cluster, ServiceSettings],
) -> None:
    running, service_settings = small_queue
    assert running.api is not None
    asyncio.run(_flood(running.base_url, 50, 10))  # warm-up: allocations that stay
    before = _rss_bytes(running.api.pid)
    responses = asyncio.run(_flood(running.base_url, 1500, 50))
    after = _rss_bytes(running.api.pid)
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) == {429}, statuses  # the warm-up filled the queue
    assert all(r.headers["retry-after"] for r in responses)
    client = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
    assert client.xlen(Keys(service_settings.key_prefix).stream(MODEL)) == QUEUE_CAP
    assert after - before < 64 << 20, (before, after)
    # Oversized bodies are cut off at the cap, not buffered.
    big = httpx.post(
        f"{running.base_url}/v1/videos",
        content=b"x" * (1 << 20),
        headers={**auth(), "content-type": "application/json"},
    )
    assert big.status_code == 413


# The schema the API serves, read from the same app factory (no server needed to collect).
schema = schemathesis.openapi.from_dict(create_app(ServiceSettings(models=(MODEL,))).openapi())


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    case: schemathesis.Case, small_queue: tuple[Cluster, ServiceSettings]
) -> None:
    running, service_settings = small_queue
    if case.operation.path == "/readyz":
        # Readiness answers 503 while no worker lives (tested in tests/service/api); here a
        # fresh announcement makes it ready so that any 5xx is a real server error.
        client = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
        Consumer(client, service_settings, MODEL, "schemathesis").announce("cpu", 0)
    served = httpx.get(f"{running.base_url}/openapi.json").json()
    assert served["paths"].keys() == schema.raw_schema["paths"].keys()
    case.call_and_validate(
        base_url=running.base_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        # Some rules span fields or the deployment (a size's sides must be multiples of 16, the
        # model must be one this server runs, seconds and num_frames exclude each other): the
        # schema cannot say them, and such requests rightly get 400. Every other check runs.
        excluded_checks=[positive_data_acceptance],
    )
