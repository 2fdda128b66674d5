"""``QVGEN_MAX_JOBS_PER_KEY`` over the API: one key at its quota of unfinished jobs gets 429
naming the limit, with Retry-After, while another key still submits."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.api.main import create_app
from service.settings import ServiceSettings

ALICE, BOB = "key-alice", "key-bob-is-longer"
BODY = {"prompt": "a ball", "size": "16x16", "num_frames": 1}


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_one_key_cannot_fill_the_models_queue(settings: ServiceSettings) -> None:
    """Before: one key filled the queue to QVGEN_MAX_QUEUE_DEPTH; every other key got 429."""
    capped = settings.model_copy(
        update={
            "api_keys": type(settings)(api_keys=f"{ALICE},{BOB}").api_keys,
            "max_jobs_per_key": 3,
            "max_queue_depth": 5,
        }
    )
    with TestClient(create_app(capped)) as client:
        made = [client.post("/v1/videos", json=BODY, headers=_as(ALICE)) for _ in range(5)]
        assert [r.status_code for r in made] == [200, 200, 200, 429, 429]
        refused = made[-1]
        error = refused.json()["error"]
        assert error["code"] == "too_many_jobs_for_key"
        assert "QVGEN_MAX_JOBS_PER_KEY allows 3" in error["message"]
        assert refused.headers["retry-after"] == str(capped.queue_full_retry_after_s)
        assert client.post("/v1/videos", json=BODY, headers=_as(BOB)).status_code == 200
        first = made[0].json()["id"]
        assert client.delete(f"/v1/videos/{first}", headers=_as(ALICE)).status_code == 200
        assert client.post("/v1/videos", json=BODY, headers=_as(ALICE)).status_code == 200


def test_without_keys_the_per_key_limit_does_not_apply(settings: ServiceSettings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_jobs_per_key": 1}))) as client:
        made = [client.post("/v1/videos", json=BODY) for _ in range(3)]
        assert [r.status_code for r in made] == [200, 200, 200]
