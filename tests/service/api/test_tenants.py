"""Isolation between API keys: each job belongs to the key that created it; every route serves
only the owner's jobs (404 for anyone else's, never 403); an admin key sees all."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.queue.consumer import Consumer
from service.queue.keys import Keys
from service.queue.records import JobField
from service.settings import ApiDocs, MetricsAccess, ServiceSettings
from service.storage import LocalResultStore
from service.worker.noop_engine import NoopEngine

ALICE, BOB, ADMIN = "key-alice", "key-bob-is-longer", "key-admin"


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(settings: ServiceSettings) -> Iterator[TestClient]:
    configured = settings.model_copy(
        update={
            "api_keys": type(settings)(api_keys=f"{ALICE},{BOB}").api_keys,
            "admin_api_keys": type(settings)(admin_api_keys=ADMIN).admin_api_keys,
        }
    )
    with TestClient(create_app(configured)) as client:
        yield client


def _create(client: TestClient, key: str, **fields: object) -> str:
    body = {"prompt": f"secret plan of {key}", "size": "16x16", "num_frames": 1, **fields}
    response = client.post("/v1/videos", json={**body}, headers=_as(key))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _complete_next(settings: ServiceSettings, sync_redis: redis.Redis) -> str:
    consumer = Consumer(sync_redis, settings, "tiny", "hand")
    delivery = consumer.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None
    claim = delivery.claim
    video = NoopEngine("tiny").generate(claim.job.request)
    stored = LocalResultStore(settings.results_dir).write(claim.job.id, claim.attempt, video)
    assert consumer.complete(claim, stored.video, stored.thumbnail)
    return claim.job.id


def test_another_keys_jobs_are_unknown_on_every_route(
    keyed: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    done = _create(keyed, ALICE, num_inference_steps=1)
    assert _complete_next(settings, sync_redis) == done
    queued = _create(keyed, ALICE)
    for video_id in (done, queued):
        for path in (
            f"/v1/videos/{video_id}",
            f"/v1/jobs/{video_id}",
            f"/v1/videos/{video_id}/content",
            f"/v1/videos/{video_id}/content?variant=thumbnail",
        ):
            response = keyed.get(path, headers=_as(BOB))
            assert response.status_code == 404, (path, response.text)
            assert response.json()["error"]["type"] == "not_found_error"
            # The owner sees it (a queued job's content is not ready yet: 409).
            assert keyed.get(path, headers=_as(ALICE)).status_code in (200, 409), path
        assert keyed.delete(f"/v1/videos/{video_id}", headers=_as(BOB)).status_code == 404
    # Bob's attempts changed nothing: the queued job is still queued, the finished one kept.
    assert keyed.get(f"/v1/videos/{queued}", headers=_as(ALICE)).json()["status"] == "queued"
    assert keyed.get(f"/v1/videos/{done}/content", headers=_as(ALICE)).status_code == 200
    listing = keyed.get("/v1/videos", headers=_as(BOB)).json()
    assert listing["data"] == [] and not listing["has_more"]
    mine = keyed.get("/v1/videos", headers=_as(ALICE)).json()["data"]
    assert [video["id"] for video in mine] == [queued, done]


def test_listings_show_only_the_callers_jobs_and_pages_stay_within_them(
    keyed: TestClient,
) -> None:
    alice = [_create(keyed, ALICE) for _ in range(3)]
    bob = [_create(keyed, BOB) for _ in range(2)]
    first = keyed.get("/v1/videos", params={"limit": 2}, headers=_as(ALICE)).json()
    assert [v["id"] for v in first["data"]] == alice[::-1][:2] and first["has_more"]
    rest = keyed.get(
        "/v1/videos", params={"limit": 2, "after": first["last_id"]}, headers=_as(ALICE)
    ).json()
    assert [v["id"] for v in rest["data"]] == alice[:1] and not rest["has_more"]
    # Another key's id is only a point in time (ids carry their creation time): the page after
    # it holds my older jobs and nothing of Bob's.
    foreign = keyed.get("/v1/videos", params={"after": bob[0]}, headers=_as(ALICE)).json()
    assert [v["id"] for v in foreign["data"]] == alice[::-1]
    assert {v["prompt"] for v in keyed.get("/v1/videos", headers=_as(BOB)).json()["data"]} == {
        f"secret plan of {BOB}"
    }


def test_the_admin_key_sees_and_deletes_every_keys_jobs(
    keyed: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    alice, bob = _create(keyed, ALICE), _create(keyed, BOB)
    everything = keyed.get("/v1/videos", headers=_as(ADMIN)).json()["data"]
    assert [video["id"] for video in everything] == [bob, alice]
    assert keyed.get(f"/v1/videos/{alice}", headers=_as(ADMIN)).status_code == 200
    assert keyed.delete(f"/v1/videos/{alice}", headers=_as(ADMIN)).status_code == 200
    assert keyed.get(f"/v1/videos/{alice}", headers=_as(ALICE)).status_code == 404
    assert keyed.delete(f"/v1/videos/{alice}", headers=_as(ADMIN)).status_code == 404
    keys = Keys(settings.key_prefix)
    assert sync_redis.zrange(keys.jobs, 0, -1) == [bob]
    owner = sync_redis.hget(keys.job(bob), JobField.OWNER)
    assert sync_redis.zrange(keys.owner_jobs(str(owner)), 0, -1) == [bob]


def test_the_same_idempotency_key_of_two_keys_makes_two_jobs(keyed: TestClient) -> None:
    body = {"prompt": "x"}
    first = keyed.post("/v1/videos", json=body, headers={**_as(ALICE), "Idempotency-Key": "k"})
    second = keyed.post("/v1/videos", json=body, headers={**_as(BOB), "Idempotency-Key": "k"})
    assert first.json()["id"] != second.json()["id"]


def test_keys_are_compared_as_fixed_length_digests(
    keyed: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    for presented in ("k", "x" * 500, ALICE, BOB):
        keyed.get("/v1/videos", headers=_as(presented))
    assert compared and set(compared) == {(32, 32)}
    # Three keys, each presented key checked against all of them: once for the per-key in-flight
    # cap (service.api.request_limits), once by the route.
    assert len(compared) == 4 * 3 * 2


def test_metrics_need_an_admin_key_when_keys_are_on(keyed: TestClient) -> None:
    """Issue 27: /metrics (every tenant's volume, the queue depth) was public with keys on."""
    assert keyed.get("/metrics").status_code == 401
    tenant = keyed.get("/metrics", headers=_as(ALICE))
    assert tenant.status_code == 403 and tenant.json()["error"]["code"] == "admin_key_required"
    assert "qvgen_queue_depth" in keyed.get("/metrics", headers=_as(ADMIN)).text


def _with(settings: ServiceSettings, **update: object) -> TestClient:
    keys = type(settings)(api_keys=ALICE, admin_api_keys=ADMIN)
    return TestClient(
        create_app(
            settings.model_copy(
                update={"api_keys": keys.api_keys, "admin_api_keys": keys.admin_api_keys, **update}
            )
        )
    )


def test_metrics_access_public_serves_anyone(settings: ServiceSettings) -> None:
    with _with(settings, metrics_access=MetricsAccess.PUBLIC) as client:
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_docs_follow_the_api_docs_setting(settings: ServiceSettings, path: str) -> None:
    with _with(settings) as public:  # the default
        assert public.get(path).status_code == 200
    with _with(settings, api_docs=ApiDocs.KEY) as keyed_docs:
        assert keyed_docs.get(path).status_code == 401
        assert keyed_docs.get(path, headers=_as(ALICE)).status_code == 200
    with _with(settings, api_docs=ApiDocs.OFF) as off:
        assert off.get(path, headers=_as(ADMIN)).status_code == 404
