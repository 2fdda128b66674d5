"""Contract tests of every endpoint through FastAPI's TestClient, against a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from qvgen.video_io import probe_video
from service.api.main import create_app
from service.queue.consumer import Consumer
from service.queue.records import ErrorCode
from service.settings import ServiceSettings
from service.storage import LocalResultStore
from service.worker.noop_engine import NoopEngine


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _create(client: TestClient, **fields: object) -> dict[str, object]:
    response = client.post("/v1/videos", json={"prompt": "a red ball", **fields})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _run_one(settings: ServiceSettings, sync_redis: redis.Redis) -> str:
    """Play a worker by hand: take the next job, make its files, complete it."""
    consumer = Consumer(sync_redis, settings, "tiny", "hand")
    delivery = consumer.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None
    claim = delivery.claim
    video = NoopEngine("tiny").generate(claim.job.request)
    stored = LocalResultStore(settings.results_dir).write(claim.job.id, claim.attempt, video)
    assert consumer.complete(
        claim, stored.video, stored.thumbnail, spritesheet_path=stored.spritesheet
    )
    return claim.job.id


def _error(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_create_from_json_answers_the_queued_video_object(client: TestClient) -> None:
    response = client.post(
        "/v1/videos",
        json={"prompt": "a red ball", "size": "32x48", "seconds": "2", "fps": 8, "seed": 3},
    )
    assert response.status_code == 200
    assert response.headers["openai-poll-after-ms"] == "50"
    video = response.json()
    assert video["object"] == "video" and video["status"] == "queued"
    assert video["id"].startswith("video_") and video["model"] == "tiny"
    assert (video["size"], video["seconds"], video["progress"]) == ("32x48", "2", 0)
    assert video["completed_at"] is None and video["error"] is None
    assert client.get(f"/v1/videos/{video['id']}").json()["id"] == video["id"]
    assert client.get(f"/v1/jobs/{video['id']}").json()["status"] == "queued"


def test_create_from_multipart_form_fields(client: TestClient) -> None:
    fields = {
        "prompt": (None, "a cube"),
        "num_inference_steps": (None, "3"),
        "size": (None, "16x16"),
    }
    response = client.post("/v1/videos", files=fields)
    assert response.status_code == 200, response.text
    video = response.json()
    assert (video["steps_total"], video["size"], video["prompt"]) == (3, "16x16", "a cube")


def test_idempotency_key_returns_the_first_job(client: TestClient) -> None:
    headers = {"Idempotency-Key": "retry-me"}
    first = client.post("/v1/videos", json={"prompt": "x"}, headers=headers).json()
    second = client.post("/v1/videos", json={"prompt": "x"}, headers=headers).json()
    # The same request sent as form fields, defaults spelt out: still the same request.
    form = {"prompt": (None, "x"), "fps": (None, "8")}
    third = client.post("/v1/videos", files=form, headers=headers).json()
    assert first["id"] == second["id"] == third["id"]
    assert [v["id"] for v in client.get("/v1/videos").json()["data"]] == [first["id"]]


def test_an_idempotency_key_reused_with_another_request_is_409(client: TestClient) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = client.post("/v1/videos", json={"prompt": "x"}, headers=headers)
    other = client.post("/v1/videos", json={"prompt": "y"}, headers=headers)
    assert other.status_code == 409
    error = _error(other)
    assert (error["code"], error["param"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert "'order-17'" in str(error["message"]) and first.json()["id"] in str(error["message"])
    assert len(client.get("/v1/videos").json()["data"]) == 1


def test_the_key_of_a_deleted_job_makes_a_new_job(client: TestClient) -> None:
    headers = {"Idempotency-Key": "again"}
    first = client.post("/v1/videos", json={"prompt": "x"}, headers=headers).json()["id"]
    assert client.post("/v1/videos", json={"prompt": "x"}, headers=headers).json()["id"] == first
    assert client.delete(f"/v1/videos/{first}").status_code == 200  # queued: deleted at once
    again = client.post("/v1/videos", json={"prompt": "x"}, headers=headers)
    assert again.status_code == 200 and again.json()["id"] != first
    assert again.json()["status"] == "queued"


@pytest.mark.parametrize(
    ("fields", "param", "quoted"),
    [
        ({"size": "33x32"}, "size", "[16, 2048]"),
        ({"fps": 0}, "fps", "greater than or equal to 1"),
        ({"num_inference_steps": 501}, "num_inference_steps", "500"),
        ({"seconds": 2, "num_frames": 9}, "seconds", "not both"),
        ({"model": "sora-2"}, "model", "served"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
    ],
)
def test_invalid_fields_are_named_with_their_range(
    client: TestClient, fields: dict[str, object], param: str, quoted: str
) -> None:
    response = client.post("/v1/videos", json={"prompt": "x", **fields})
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == param and quoted in str(error["message"])


def test_uploads_and_other_bodies_are_refused(client: TestClient) -> None:
    upload = client.post(
        "/v1/videos", data={"prompt": "x"}, files={"input_reference": ("a.png", b"\x89PNG")}
    )
    assert upload.status_code == 400 and _error(upload)["param"] == "input_reference"
    text = client.post("/v1/videos", content=b"prompt=x", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    broken = client.post(
        "/v1/videos", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and _error(broken)["code"] == "invalid_json"


def test_oversized_body_gets_413(client: TestClient, settings: ServiceSettings) -> None:
    big = b'{"prompt": "' + b"x" * settings.max_body_bytes + b'"}'
    response = client.post("/v1/videos", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and _error(response)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield b'{"prompt": "'
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    streamed = client.post(
        "/v1/videos", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_full_queue_gets_429_with_retry_after(
    redis_server: object, settings: ServiceSettings
) -> None:
    small = settings.model_copy(update={"max_queue_depth": 2})
    with TestClient(create_app(small)) as client:
        _create(client)
        _create(client)
        response = client.post("/v1/videos", json={"prompt": "x"})
        assert response.status_code == 429
        assert response.headers["retry-after"] == str(small.queue_full_retry_after_s)
        assert _error(response)["code"] == "queue_full"


def test_unknown_and_malformed_ids_are_404(client: TestClient) -> None:
    for video_id in ("video_" + "0" * 32, "nope", "video_..%2F..%2Fetc"):
        for path in (f"/v1/videos/{video_id}", f"/v1/videos/{video_id}/content"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert _error(response)["type"] == "not_found_error"
        assert client.delete(f"/v1/videos/{video_id}").status_code == 404


def test_listing_pages_with_cursor(client: TestClient) -> None:
    ids = [_create(client)["id"] for _ in range(5)]
    page = client.get("/v1/videos", params={"limit": 2, "order": "asc"}).json()
    assert page["object"] == "list" and [v["id"] for v in page["data"]] == ids[:2]
    assert page["has_more"] and page["last_id"] == ids[1] and page["first_id"] == ids[0]
    rest = client.get("/v1/videos", params={"after": ids[1], "limit": 10, "order": "asc"}).json()
    assert [v["id"] for v in rest["data"]] == ids[2:] and not rest["has_more"]
    newest = client.get("/v1/videos", params={"limit": 1}).json()
    assert newest["data"][0]["id"] == ids[-1]
    assert client.get("/v1/videos", params={"limit": 0}).status_code == 400
    assert client.get("/v1/videos", params={"after": "video_x"}).status_code == 400


def test_content_of_a_completed_video_and_its_thumbnail(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    video_id = _create(client, size="32x32", num_frames=5, num_inference_steps=2)["id"]
    assert client.get(f"/v1/videos/{video_id}/content").status_code == 409
    assert _run_one(settings, sync_redis) == video_id
    done = client.get(f"/v1/videos/{video_id}")
    assert "openai-poll-after-ms" not in done.headers
    body = done.json()
    assert (body["status"], body["progress"], body["attempt"]) == ("completed", 100, 1)
    assert body["expires_at"] - body["completed_at"] == settings.retention_s
    mp4 = client.get(f"/v1/videos/{video_id}/content")
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
    (tmp_path / "got.mp4").write_bytes(mp4.content)
    info = probe_video(tmp_path / "got.mp4")
    assert (info.frame_count, info.width, info.height) == (5, 32, 32)
    thumbnail = client.get(f"/v1/videos/{video_id}/content", params={"variant": "thumbnail"})
    assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\x89PNG")
    spritesheet = client.get(f"/v1/videos/{video_id}/content", params={"variant": "spritesheet"})
    assert spritesheet.status_code == 200 and spritesheet.headers["content-type"] == "image/jpeg"
    assert spritesheet.content.startswith(b"\xff\xd8")
    storyboard = client.get(f"/v1/videos/{video_id}/content", params={"variant": "storyboard"})
    assert storyboard.status_code == 400 and _error(storyboard)["param"] == "variant"


def test_one_delete_removes_a_queued_or_a_finished_job_and_its_files(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    queued = _create(client)["id"]
    deleted = client.delete(f"/v1/videos/{queued}").json()
    assert deleted == {"id": queued, "object": "video.deleted", "deleted": True}
    assert client.get(f"/v1/videos/{queued}").status_code == 404
    assert client.delete(f"/v1/videos/{queued}").status_code == 404
    assert client.get("/v1/videos").json()["data"] == []
    finished = _create(client, size="16x16", num_frames=1, num_inference_steps=1)["id"]
    assert _run_one(settings, sync_redis) == finished
    job_dir = settings.results_dir / finished
    assert any(job_dir.iterdir())
    assert client.delete(f"/v1/videos/{finished}").status_code == 200
    assert client.get(f"/v1/videos/{finished}").status_code == 404
    assert client.delete(f"/v1/videos/{finished}").status_code == 404
    assert not job_dir.exists()


def test_failed_job_reports_its_error(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    video_id = _create(client)["id"]
    consumer = Consumer(sync_redis, settings, "tiny", "hand")
    delivery = consumer.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None
    assert consumer.fail(delivery.claim, ErrorCode.INVALID_REQUEST, "width 64 too large")
    body = client.get(f"/v1/videos/{video_id}").json()
    assert body["status"] == "failed"
    assert body["error"] == {"code": "invalid_request", "message": "width 64 too large"}


def test_api_keys_are_required_when_configured(
    redis_server: object, settings: ServiceSettings
) -> None:
    keyed = type(settings)(**{**settings.model_dump(), "api_keys": "k-one,k-two"})
    with TestClient(create_app(keyed)) as client:
        assert client.get("/v1/videos").status_code == 401
        wrong = client.get("/v1/videos", headers={"Authorization": "Bearer k-three"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert _error(wrong)["code"] == "invalid_api_key"
        for key in ("k-one", "k-two"):
            ok = client.get("/v1/videos", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200
        # Every tenant's volume: an admin key's (tests/service/api/test_tenants.py).
        assert client.get("/metrics").status_code == 401


def test_models_health_and_readiness(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert client.get("/healthz").json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["workers"] == {"tiny": 0}
    Consumer(sync_redis, settings, "tiny", "w1").announce("cpu", 0)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ready",
        "redis": True,
        "workers": {"tiny": 1},
    }


def test_metrics_use_route_templates_not_ids(client: TestClient) -> None:
    video_id = _create(client)["id"]
    client.get(f"/v1/videos/{video_id}")
    text = client.get("/metrics").text
    assert 'qvgen_jobs_submitted_total{model="tiny"} 1.0' in text
    assert 'qvgen_queue_depth{model="tiny"} 1.0' in text
    assert 'route="/v1/videos/{video_id}"' in text
    assert video_id not in text
