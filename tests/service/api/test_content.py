"""``GET /v1/videos/{id}/content`` on both stores: byte ranges, entity tags, the spritesheet,
the redirect to a presigned URL, and a store that is down. Real Redis, the real app through
FastAPI's TestClient, the moto S3 server over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.content import ByteRange, RangeNotSatisfiable, requested_range
from service.api.main import create_app
from service.queue.consumer import Consumer
from service.settings import ServiceSettings
from service.storage import open_store
from service.worker.noop_engine import NoopEngine
from tests.service.redis_fixtures import RedisServer, free_port, redis_server, settings, sync_redis
from tests.service.storage.s3_fixtures import S3Server, s3_server, s3_settings

__all__ = ["redis_server", "s3_server", "settings", "sync_redis"]

JOB = {"prompt": "a red ball", "size": "32x32", "num_frames": 5, "num_inference_steps": 1}


def _completed(client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis) -> str:
    """Submit through the API, then play a worker by hand on the settings' store."""
    video_id = str(client.post("/v1/videos", json=JOB).json()["id"])
    consumer = Consumer(sync_redis, settings, "tiny", "hand")
    delivery = consumer.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None
    claim = delivery.claim
    video = NoopEngine("tiny").generate(claim.job.request)
    stored = open_store(settings).write(claim.job.id, claim.attempt, video)
    assert consumer.complete(claim, stored.video, stored.thumbnail, stored.spritesheet)
    return video_id


@pytest.fixture
def local(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_requested_range_follows_rfc_9110() -> None:
    assert requested_range(None, 100) is None
    assert requested_range("bytes=10-19", 100) == ByteRange(10, 19)
    assert requested_range("bytes=90-", 100) == ByteRange(90, 99)
    assert requested_range("bytes=90-500", 100) == ByteRange(90, 99)
    assert requested_range("bytes=-5", 100) == ByteRange(95, 99)
    assert requested_range("bytes=-500", 100) is None  # all of it
    assert requested_range("bytes=0-99", 100) is None
    for ignored in ("bytes=0-1,5-6", "items=0-1", "bytes=5-2", "bytes=-"):
        assert requested_range(ignored, 100) is None, ignored
    for unsatisfiable in ("bytes=100-", "bytes=200-300", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            requested_range(unsatisfiable, 100)


def test_local_content_serves_ranges_and_entity_tags(
    local: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    video_id = _completed(local, settings, sync_redis)
    url = f"/v1/videos/{video_id}/content"
    whole = local.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)
    assert whole.headers["content-length"] == str(size)
    assert whole.headers["content-disposition"] == f'attachment; filename="{video_id}.mp4"'
    etag = whole.headers["etag"]
    part = local.get(url, headers={"Range": "bytes=4-7"})
    assert (part.status_code, part.content) == (206, b"ftyp")
    assert part.headers["content-range"] == f"bytes 4-7/{size}"
    tail = local.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    assert local.get(url, headers={"Range": "bytes=0-1,4-5"}).content == whole.content
    same = local.get(url, headers={"Range": "bytes=4-7", "If-Range": etag})
    assert same.status_code == 206
    changed = local.get(url, headers={"Range": "bytes=4-7", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == whole.content
    past = local.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["error"]["code"] == "range_not_satisfiable"


def test_local_spritesheet_and_a_variant_that_does_not_exist(
    local: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    video_id = _completed(local, settings, sync_redis)
    url = f"/v1/videos/{video_id}/content"
    sheet = local.get(url, params={"variant": "spritesheet"})
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/jpeg"
    assert sheet.headers["content-disposition"] == f'attachment; filename="{video_id}.jpg"'
    bad = local.get(url, params={"variant": "gif"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "variant"
    assert "spritesheet" in bad.json()["error"]["message"]


def test_s3_redirect_answers_307_to_a_presigned_url_of_the_object(
    redis_server: RedisServer, s3_server: S3Server, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = s3_settings(
        redis_server.url,
        s3_server,
        s3_server.new_bucket(),
        tmp_path / "results",
        content_delivery="redirect",
        content_url_ttl_s=120,
    )
    with TestClient(create_app(settings)) as client:
        video_id = _completed(client, settings, sync_redis)
        answer = client.get(
            f"/v1/videos/{video_id}/content",
            params={"variant": "thumbnail"},
            follow_redirects=False,
        )
    assert answer.status_code == 307 and answer.headers["cache-control"] == "no-store"
    location = answer.headers["location"]
    assert (
        location.startswith(f"{s3_server.url}/{settings.s3_bucket}/")
        and "X-Amz-Expires=120" in location
    )
    fetched = httpx.get(location, timeout=10)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    assert fetched.headers["content-disposition"] == f'attachment; filename="{video_id}.png"'


def test_s3_stream_serves_ranges_and_a_store_that_is_down_answers_503(
    redis_server: RedisServer, s3_server: S3Server, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = s3_settings(redis_server.url, s3_server, s3_server.new_bucket(), tmp_path / "r")
    with TestClient(create_app(settings)) as client:
        video_id = _completed(client, settings, sync_redis)
        url = f"/v1/videos/{video_id}/content"
        whole = client.get(url)
        assert whole.status_code == 200 and whole.content[4:8] == b"ftyp"
        part = client.get(url, headers={"Range": "bytes=4-7"})
        assert (part.status_code, part.content) == (206, b"ftyp")
        assert part.headers["etag"] == whole.headers["etag"]
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    with TestClient(create_app(down)) as client:
        answer = client.get(f"/v1/videos/{video_id}/content")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    error = answer.json()["error"]
    assert error["code"] == "result_store_unavailable" and "127.0.0.1" not in error["message"]
    assert not (tmp_path / "r").exists()
