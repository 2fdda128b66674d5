"""``POST /v1/videos/{id}/remix`` and ``remixed_from_video_id``, through FastAPI's TestClient
against a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.queue.consumer import Consumer
from service.queue.keys import Keys
from service.queue.records import JobField, request_from_json
from service.settings import ServiceSettings

SOURCE = {
    "prompt": "a red ball",
    "size": "32x48",
    "num_frames": 9,
    "fps": 6,
    "num_inference_steps": 3,
    "guidance_scale": 2.5,
    "negative_prompt": "blur",
    "seed": 1234,
    "cache": "first-block",
    "cache_threshold": 0.2,
    "guidance_stop": 0.5,
}


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _complete_next(settings: ServiceSettings, sync_redis: redis.Redis) -> str:
    consumer = Consumer(sync_redis, settings, "tiny", "hand")
    delivery = consumer.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None
    assert consumer.complete(delivery.claim, "/r/v.mp4", "/r/t.png")
    return delivery.claim.job.id


def _completed_source(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> dict[str, object]:
    source = client.post("/v1/videos", json=SOURCE).json()
    assert source["remixed_from_video_id"] is None
    assert _complete_next(settings, sync_redis) == source["id"]
    return dict(source)


def test_a_remix_is_the_source_again_with_the_new_prompt(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    source = _completed_source(client, settings, sync_redis)
    response = client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "a blue ball"})
    assert response.status_code == 200, response.text
    remix = response.json()
    assert remix["id"] != source["id"] and remix["status"] == "queued"
    assert remix["remixed_from_video_id"] == source["id"] and remix["prompt"] == "a blue ball"
    for field in ("model", "size", "seconds", "steps_total"):
        assert remix[field] == source[field], field
    keys = Keys(settings.key_prefix)
    made = request_from_json(str(sync_redis.hget(keys.job(remix["id"]), JobField.REQUEST)))
    was = request_from_json(str(sync_redis.hget(keys.job(source["id"]), JobField.REQUEST)))
    assert made.prompt == "a blue ball"
    assert {**vars(made), "prompt": was.prompt} == vars(was)  # seed, frames, guidance, cache, …
    assert (made.cache.value, made.cache_threshold, made.guidance_stop) == ("first-block", 0.2, 0.5)
    # Every video object carries the field: retrieve, list.
    assert client.get(f"/v1/videos/{remix['id']}").json()["remixed_from_video_id"] == source["id"]
    listed = {v["id"]: v["remixed_from_video_id"] for v in client.get("/v1/videos").json()["data"]}
    assert listed == {remix["id"]: source["id"], source["id"]: None}
    # A remix of a remix names its own source; the source may be deleted meanwhile.
    assert _complete_next(settings, sync_redis) == remix["id"]
    assert client.delete(f"/v1/videos/{source['id']}").status_code == 200
    again = client.post(f"/v1/videos/{remix['id']}/remix", json={"prompt": "green"}).json()
    assert again["remixed_from_video_id"] == remix["id"]
    assert client.get(f"/v1/videos/{remix['id']}").json()["remixed_from_video_id"] == source["id"]


def test_a_remix_of_a_video_not_completed_is_409(client: TestClient) -> None:
    queued = client.post("/v1/videos", json=SOURCE).json()["id"]
    response = client.post(f"/v1/videos/{queued}/remix", json={"prompt": "blue"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("video_not_ready", "video_id")
    assert "queued" in error["message"]
    assert len(client.get("/v1/videos").json()["data"]) == 1  # nothing was made


@pytest.mark.parametrize(
    ("body", "param", "quoted"),
    [
        ({}, "prompt", "Field required"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "   "}, "prompt", "white space"),
        ({"prompt": "x" * 4001}, "prompt", "at most 4000"),
        ({"prompt": "x", "seed": 3}, "seed", "Extra inputs"),
        ({"prompt": "x", "webhook_url": "http://example.com/h"}, "webhook_url", "accepts no"),
    ],
)
def test_bad_remix_input_is_400_naming_the_field(
    client: TestClient,
    settings: ServiceSettings,
    sync_redis: redis.Redis,
    body: dict[str, object],
    param: str,
    quoted: str,
) -> None:
    source = _completed_source(client, settings, sync_redis)
    response = client.post(f"/v1/videos/{source['id']}/remix", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and quoted in error["message"], error
    assert len(client.get("/v1/videos").json()["data"]) == 1


def test_a_remix_of_an_unknown_or_another_keys_video_is_404(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    keyed = settings.model_copy(update={"api_keys": type(settings)(api_keys="alice,bob").api_keys})
    with TestClient(create_app(keyed)) as client:
        alice, bob = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
        source = client.post("/v1/videos", json=SOURCE, headers=alice).json()["id"]
        _complete_next(keyed, sync_redis)
        for video_id in (source, "video_" + "0" * 32, "nope"):
            response = client.post(
                f"/v1/videos/{video_id}/remix", json={"prompt": "x"}, headers=bob
            )
            assert response.status_code == 404, video_id
            assert response.json()["error"]["type"] == "not_found_error"
        assert client.get("/v1/videos", headers=bob).json()["data"] == []
        ok = client.post(f"/v1/videos/{source}/remix", json={"prompt": "x"}, headers=alice)
        assert ok.status_code == 200


def test_a_remix_retried_with_its_idempotency_key_is_one_job(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    source = _completed_source(client, settings, sync_redis)
    headers = {"Idempotency-Key": "remix-1"}
    path = f"/v1/videos/{source['id']}/remix"
    first = client.post(path, json={"prompt": "blue"}, headers=headers).json()["id"]
    assert client.post(path, json={"prompt": "blue"}, headers=headers).json()["id"] == first
    # The same key for a plain create of the same prompt is another request.
    create = client.post("/v1/videos", json={**SOURCE, "prompt": "blue"}, headers=headers)
    assert create.status_code == 409
