"""The playground's routes and the API extras it reads, through TestClient against a real Redis:
the page and its assets with their security headers, ``limits`` on the model object, and
``queue_position`` on queued jobs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from qvgen.family import ModelFamily
from service.api.main import create_app
from service.api.routes.playground import STATIC_DIR, Asset
from service.api.schemas import MAX_SIDE, MAX_STEPS, QUEUE_POSITION_CAP, SIDE_MULTIPLE
from service.engine.rules import (
    EngineRules,
    ModelGeometry,
    ModelLimits,
    default_limits,
)
from service.queue.consumer import Consumer
from service.queue.keys import Keys
from service.settings import ServiceSettings
from tests.service.redis_fixtures import RedisServer, make_settings


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


class _Tags(HTMLParser):
    """Every start tag with its attributes, and whether any <script>/<style> carries text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_code: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag

    def handle_data(self, data: str) -> None:
        if self._open in ("script", "style") and data.strip():
            self.inline_code.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def _directives(policy: str) -> dict[str, list[str]]:
    parts = (part.split() for part in policy.split(";") if part.strip())
    return {words[0]: words[1:] for words in parts}


def test_page_is_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = _directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    for directive in ("img-src", "media-src"):
        assert set(policy[directive]) == {"'self'", "blob:"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_page_holds_no_inline_code_and_links_only_its_own_assets(client: TestClient) -> None:
    parser = _Tags()
    parser.feed(client.get("/").text)
    assert parser.inline_code == []
    links = [
        value
        for _, attrs in parser.tags
        for name, value in attrs.items()
        if name in ("src", "href") and value is not None
    ]
    assert sorted(links) == sorted(["/docs", *(f"/static/{asset}" for asset in Asset)])
    for tag, attrs in parser.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert "style" not in attrs, (tag, attrs)


@pytest.mark.parametrize("asset", list(Asset))
def test_assets_are_served_with_their_media_type(client: TestClient, asset: Asset) -> None:
    response = client.get(f"/static/{asset}")
    assert response.status_code == 200
    assert response.headers["content-type"] == asset.media_type
    assert response.content == (STATIC_DIR / asset).read_bytes()
    assert "content-security-policy" in response.headers


def test_script_reaches_only_relative_urls(client: TestClient) -> None:
    script = client.get(f"/static/{Asset.SCRIPT}").text
    assert re.findall(r"https?://", script) == []
    assert "eval(" not in script and "innerHTML" not in script


def test_only_listed_assets_are_served(client: TestClient) -> None:
    for name in ("index.html", "../routes/playground.py", "missing.js"):
        response = client.get(f"/static/{name}")
        assert 400 <= response.status_code < 500, (name, response.status_code)


def test_page_needs_no_key_but_the_api_does(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = make_settings(redis_server.url, tmp_path / "results", api_keys="secret-key")
    with TestClient(create_app(settings)) as keyed:
        assert keyed.get("/").status_code == 200
        assert keyed.get(f"/static/{Asset.SCRIPT}").status_code == 200
        assert keyed.get("/v1/models").status_code == 401
        assert "secret-key" not in keyed.get("/").text


def _limits(client: TestClient) -> dict[str, object]:
    (model,) = client.get("/v1/models").json()["data"]
    limits: dict[str, object] = model["limits"]
    return limits


def test_models_carry_the_limits_the_api_applies(client: TestClient) -> None:
    limits = _limits(client)
    assert limits["from_worker"] is False and limits["frame_step"] == 1
    assert limits["max_width"] == limits["max_height"] == MAX_SIDE
    assert limits["max_inference_steps"] == MAX_STEPS
    assert limits["default_size"] == "64x64" and limits["default_num_frames"] == 17
    too_wide = f"{MAX_SIDE + SIDE_MULTIPLE}x64"
    refused = client.post("/v1/videos", json={"prompt": "x", "size": too_wide})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "size"
    widest = f"{MAX_SIDE}x64"
    assert client.post("/v1/videos", json={"prompt": "x", "size": widest}).status_code == 200


def test_a_workers_published_rules_narrow_the_limits(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    consumer = Consumer(sync_redis, settings, "tiny", "w1")
    wan = EngineRules(
        geometry=ModelGeometry(size_multiple=16, frame_step=4, text_tokens=8),
        limits=default_limits(ModelFamily.WAN),
    )
    consumer.publish_rules(wan)
    limits = _limits(client)
    assert limits["from_worker"] is True
    assert (limits["max_width"], limits["max_height"]) == (1280, 1280)
    assert (limits["frame_step"], limits["max_frames"]) == (4, 81)
    assert limits["max_inference_steps"] == wan.limits.max_steps
    assert (limits["min_guidance_scale"], limits["max_guidance_scale"]) == (1.0, 20.0)
    assert limits["max_prompt_chars"] == wan.limits.max_prompt_chars

    # Sides must satisfy both multiples; frame counts the model's step below its cap.
    odd = EngineRules(
        geometry=ModelGeometry(size_multiple=24, frame_step=8, text_tokens=8),
        limits=ModelLimits(max_width=1000, max_height=4000, max_frames=80),
    )
    consumer.publish_rules(odd)
    limits = _limits(client)
    assert (limits["size_multiple"], limits["min_side"]) == (48, 48)
    assert (limits["max_width"], limits["max_height"]) == (960, MAX_SIDE // 48 * 48)
    assert limits["max_frames"] == 73

    consumer.publish_rules(None)
    assert _limits(client)["from_worker"] is False


def test_unreadable_rules_fall_back_to_the_api_bounds(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    key = Keys(settings.key_prefix).rules("tiny")
    for text in ("not json", json.dumps({"geometry": {"size_multiple": 16}, "limits": {}})):
        sync_redis.set(key, text)
        assert _limits(client)["from_worker"] is False


def test_queue_position_counts_the_unfinished_jobs_ahead(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    ids = [client.post("/v1/videos", json={"prompt": f"job {i}"}).json()["id"] for i in range(3)]

    def positions() -> list[int | None]:
        """Each job's position; None for one running (it has none) or deleted (404)."""
        answers = [client.get(f"/v1/videos/{job}") for job in ids]
        return [a.json()["queue_position"] if a.status_code == 200 else None for a in answers]

    assert positions() == [0, 1, 2]
    delivery = Consumer(sync_redis, settings, "tiny", "w1").next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None
    assert delivery.claim.job.id == ids[0]
    # The running job is still ahead of the others; it has no position of its own.
    assert positions() == [None, 1, 2]
    assert client.delete(f"/v1/videos/{ids[0]}").status_code == 200
    assert positions() == [None, 0, 1]
    assert client.delete(f"/v1/videos/{ids[1]}").status_code == 200
    assert positions() == [None, None, 0]
    listed = client.get("/v1/videos").json()["data"]
    assert [video["id"] for video in listed] == [ids[2]]
    assert {video["queue_position"] for video in listed} == {None}


def test_queue_position_stops_counting_at_the_cap(client: TestClient) -> None:
    ids = [
        client.post("/v1/videos", json={"prompt": f"job {i}"}).json()["id"]
        for i in range(QUEUE_POSITION_CAP + 2)
    ]
    last = client.get(f"/v1/videos/{ids[-1]}").json()
    assert last["queue_position"] == QUEUE_POSITION_CAP
    assert client.get(f"/v1/videos/{ids[-2]}").json()["queue_position"] == QUEUE_POSITION_CAP
    assert client.get(f"/v1/videos/{ids[-3]}").json()["queue_position"] == QUEUE_POSITION_CAP - 1
