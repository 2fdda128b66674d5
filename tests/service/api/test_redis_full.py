"""Redis full (maxmemory, noeviction): submissions get 503 with Retry-After and create nothing;
running jobs still finish, cancellations and heartbeats still work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.queue.consumer import Consumer
from service.queue.keys import Keys
from service.settings import ServiceSettings
from tests.service.redis_fixtures import RedisServer, make_settings, running_redis

PROMPT = "a long prompt " * 280  # 3920 characters: the store fills in a few hundred jobs


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(
        tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "everysec"
    ) as server:
        yield server


def _fill(client: TestClient) -> Counter[int]:
    statuses: Counter[int] = Counter()
    for _ in range(2000):
        response = client.post("/v1/videos", json={"prompt": PROMPT, "size": "16x16"})
        statuses[response.status_code] += 1
        if response.status_code != 200:
            return statuses
    raise AssertionError("Redis never filled up")


def test_a_full_redis_answers_503_and_keeps_what_it_has(
    small_redis: RedisServer, tmp_path: Path
) -> None:
    settings: ServiceSettings = make_settings(small_redis.url, tmp_path / "results")
    admin = redis.Redis.from_url(small_redis.url, decode_responses=True)
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 600_000)
    keys = Keys(settings.key_prefix)
    with TestClient(create_app(settings)) as client:
        statuses = _fill(client)
        refused = client.post("/v1/videos", json={"prompt": PROMPT})
        assert set(statuses) == {200, 503} and statuses[503] == 1, statuses
        assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
        error = refused.json()["error"]
        assert error["code"] == "store_full" and "nothing was created" in error["message"]
        assert "qvgen_redis_out_of_memory_total 2.0" in client.get("/metrics").text
        # Nothing half-written: every job hash has its stream entry and its listing entry.
        hashes = sum(1 for _ in admin.scan_iter(match=keys.job("*"), count=1000))
        assert hashes == statuses[200] == admin.zcard(keys.jobs) == admin.xlen(keys.stream("tiny"))
        # Still full, the queue drains: a worker starts and finishes a job, heartbeats, and a
        # client cancels one.
        worker = Consumer(admin, settings, "tiny", "w1")
        worker.announce("cpu", 0)
        delivery = worker.next_job(block_ms=100)
        assert delivery is not None and delivery.claim is not None
        assert worker.heartbeat(delivery.claim)
        assert worker.complete(delivery.claim, "v.mp4", "t.png")
        newest = client.get("/v1/videos", params={"limit": 1}).json()["data"][0]["id"]
        assert client.delete(f"/v1/videos/{newest}").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/videos", json={"prompt": PROMPT}).status_code == 503
        # With room again, submissions are accepted again.
        admin.config_set("maxmemory", 0)
        assert client.post("/v1/videos", json={"prompt": PROMPT}).status_code == 200
    admin.close()
