"""The API's answers when Redis restarts, is gone, or is slow; and bodies that are not JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from tests.service.redis_fixtures import RedisServer, make_settings, running_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(
        tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "everysec"
    ) as server:
        yield server


@pytest.fixture
def client(own_redis: RedisServer, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(own_redis.url, tmp_path / "results", redis_socket_timeout_s=1.0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_first_request_after_a_redis_restart_is_answered(
    client: TestClient, own_redis: RedisServer
) -> None:
    for trial in range(3):
        created = client.post("/v1/videos", json={"prompt": f"before restart {trial}"})
        assert created.status_code == 200
        own_redis.stop()  # the pooled connections now point at a closed socket
        own_redis.start()
        listed = client.get("/v1/videos")  # a stale pooled connection, retried once at once
        assert listed.status_code == 200, listed.text
        assert created.json()["id"] in [video["id"] for video in listed.json()["data"]]
        assert client.post("/v1/videos", json={"prompt": "after"}).status_code == 200


def test_redis_gone_answers_503_with_retry_after(
    client: TestClient, own_redis: RedisServer
) -> None:
    video_id = client.post("/v1/videos", json={"prompt": "x"}).json()["id"]
    own_redis.kill()
    for method, path in (("GET", f"/v1/videos/{video_id}"), ("GET", "/v1/videos")):
        response = client.request(method, path)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "service_unavailable_error"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    own_redis.start()
    assert client.get(f"/v1/videos/{video_id}").status_code == 200


def _post_raw(client: TestClient, body: bytes) -> dict[str, object]:
    response = client.post("/v1/videos", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error: dict[str, object] = response.json()["error"]
    return error


def test_deep_or_huge_json_is_400_not_500(client: TestClient) -> None:
    # 2 KB bodies: arrays nested 1000 deep, at the top and as a field's value; near the stack's
    # limit either the parser or the error's quote of the value gives up: both are 400s.
    assert _post_raw(client, b"[" * 1000 + b"]" * 1000)["code"] == "invalid_json"
    for depth in (500, 900, 990, 999, 5000):
        nested = b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"
        error = _post_raw(client, nested)
        assert error["code"] == "invalid_json" or error["param"] == "prompt", error
    # An integer of 5000 digits (Python refuses to parse more than 4300).
    error = _post_raw(client, b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}")
    assert error["code"] == "invalid_json" and "4300" in str(error["message"])
    error = _post_raw(client, json.dumps({"prompt": "x", "seed": "9" * 5000}).encode())
    assert error["param"] == "seed"
    assert _post_raw(client, b'{"prompt": "x", "guidance_scale": 1e400}')["param"] == (
        "guidance_scale"
    )
