"""Webhooks end to end on a real Redis: the API takes a ``webhook_url``, a job's end writes its
event, the deliverer (the real loop, in a thread) posts it to a real HTTP receiver, which checks
every attempt's signature with its own verifier (``receiver.verify``) and the SDK's."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable

import openai
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from service.api.main import create_app
from service.queue.consumer import Consumer
from service.queue.keys import Keys
from service.queue.records import ErrorCode, now_ms, webhook_event_id
from service.settings import ServiceSettings
from service.webhooks.deliverer import WebhookDeliverer
from service.webhooks.outbox import Outbox, retry_delay_s
from service.webhooks.urls import WebhookPolicy, WebhookUrlError, check_webhook_url
from tests.service.webhooks.receiver import WAIT_S, InvalidSignature, running_receiver, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def hooked(settings: ServiceSettings) -> ServiceSettings:
    return settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_allowed_hosts": ("127.0.0.1",),
            # The receivers listen on 127.0.0.1, on a free port.
            "webhook_allow_private_addresses": True,
            "webhook_allowed_ports": ("1024-65535",),
            "webhook_retry_base_s": 0.05,
            "webhook_retry_max_s": 0.2,
        }
    )


def _submit(client: TestClient, **fields: object) -> str:
    response = client.post("/v1/videos", json={"prompt": "a red ball", **fields})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _finish(settings: ServiceSettings, client: redis.Redis, ok: bool = True) -> str:
    """Play the worker: take the next job and complete (or fail) it."""
    consumer = Consumer(client, settings, "tiny", "hand")
    delivery = consumer.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None
    claim = delivery.claim
    if ok:
        assert consumer.complete(claim, "/r/v.mp4", "/r/t.png")
    else:
        assert consumer.fail(claim, ErrorCode.ENGINE_ERROR, "boom")
    return claim.job.id


def _wait_outbox_empty(settings: ServiceSettings, client: redis.Redis) -> None:
    deadline = time.monotonic() + WAIT_S
    while client.zcard(Keys(settings.key_prefix).webhooks_due):
        assert time.monotonic() < deadline, "events still due"
        time.sleep(0.02)


def _check_signed(request_headers: dict[str, str], body: bytes) -> None:
    verify(SECRET, request_headers, body)
    sdk = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    sdk.webhooks.verify_signature(body, request_headers)


def test_each_ended_job_is_announced_once_signed_in_openais_shape(
    hooked: ServiceSettings,
    sync_redis: redis.Redis,
    start_deliverer: Callable[[ServiceSettings], WebhookDeliverer],
) -> None:
    with running_receiver() as receiver, TestClient(create_app(hooked)) as client:
        done = _submit(client, webhook_url=receiver.url)
        failed = _submit(client, webhook_url=receiver.url)
        _submit(client)  # no URL, no deployment URL: no event
        assert _finish(hooked, sync_redis) == done
        assert _finish(hooked, sync_redis, ok=False) == failed
        _finish(hooked, sync_redis)
        start_deliverer(hooked)
        received = receiver.wait_for(2)
        _wait_outbox_empty(hooked, sync_redis)
    assert len(receiver.requests) == 2
    by_type = {}
    for request in received:
        _check_signed(request.headers, request.body)
        event = json.loads(request.body)
        assert request.headers["webhook-id"] == event["id"]
        assert request.headers["content-type"] == "application/json"
        by_type[event["type"]] = event
    assert set(by_type) == {"video.completed", "video.failed"}
    # The verifier can fail: another body, another secret, an old timestamp.
    request = received[0]
    with pytest.raises(InvalidSignature):
        verify(SECRET, request.headers, request.body + b" ")
    with pytest.raises(InvalidSignature):
        verify(
            "whsec_" + base64.b64encode(b"another key, 24 bytes...").decode(),
            request.headers,
            request.body,
        )
    with pytest.raises(InvalidSignature):
        verify(SECRET, request.headers, request.body, tolerance_s=-1)
    for kind, video_id in (("video.completed", done), ("video.failed", failed)):
        event = by_type[kind]
        assert set(event) == {"id", "object", "created_at", "type", "data"}
        assert (event["object"], event["data"]) == ("event", {"id": video_id})
        assert (
            event["id"] == webhook_event_id(video_id)
            and abs(event["created_at"] - time.time()) < 600
        )


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(
    hooked: ServiceSettings,
    sync_redis: redis.Redis,
    start_deliverer: Callable[[ServiceSettings], WebhookDeliverer],
) -> None:
    with running_receiver([500, 503]) as receiver, TestClient(create_app(hooked)) as client:
        video_id = _submit(client, webhook_url=receiver.url)
        _finish(hooked, sync_redis)
        start_deliverer(hooked)
        attempts = receiver.wait_for(3)
        _wait_outbox_empty(hooked, sync_redis)
    assert [a.answered for a in attempts] == [500, 503, 200] and len(receiver.requests) == 3
    # The same event every time: the same id and body, each attempt signed anew.
    assert {a.headers["webhook-id"] for a in attempts} == {webhook_event_id(video_id)}
    assert len({a.body for a in attempts}) == 1
    for attempt in attempts:
        _check_signed(attempt.headers, attempt.body)
    keys = Keys(hooked.key_prefix)
    assert not sync_redis.exists(keys.webhook(webhook_event_id(video_id)))
    assert sync_redis.xlen(keys.webhooks_dead) == 0


def test_an_event_whose_attempts_all_fail_is_dead_lettered(
    hooked: ServiceSettings,
    sync_redis: redis.Redis,
    start_deliverer: Callable[[ServiceSettings], WebhookDeliverer],
) -> None:
    twice = hooked.model_copy(update={"webhook_max_attempts": 2})
    with running_receiver([500] * 10) as receiver, TestClient(create_app(twice)) as client:
        video_id = _submit(client, webhook_url=receiver.url)
        _finish(twice, sync_redis)
        start_deliverer(twice)
        _wait_outbox_empty(twice, sync_redis)
    assert len(receiver.requests) == 2
    dead = sync_redis.xrange(Keys(twice.key_prefix).webhooks_dead)
    assert len(dead) == 1
    fields = dead[0][1]
    assert (fields["event"], fields["video_id"], fields["attempts"]) == (
        webhook_event_id(video_id),
        video_id,
        "2",
    )
    assert fields["error"] == "HTTP 500" and fields["url"] == receiver.url


def test_a_deliverer_that_dies_mid_attempt_leaves_the_event_to_another(
    hooked: ServiceSettings,
    sync_redis: redis.Redis,
    start_deliverer: Callable[[ServiceSettings], WebhookDeliverer],
) -> None:
    """The outbox is in Redis: written with no deliverer running (as after a restart), and
    claimed by one that never records an outcome (killed mid-attempt): once its lease ends the
    next deliverer sends it, as attempt 2 with the same id."""
    with running_receiver() as receiver, TestClient(create_app(hooked)) as client:
        video_id = _submit(client, webhook_url=receiver.url)
        _finish(hooked, sync_redis)
        outbox = Outbox(sync_redis, Keys(hooked.key_prefix))
        (claimed,) = outbox.claim(now_ms(), lease_ms=300, limit=10)
        assert (claimed.id, claimed.attempt) == (webhook_event_id(video_id), 1)
        assert outbox.claim(now_ms(), lease_ms=300, limit=10) == []  # leased: nobody else's
        start_deliverer(hooked)
        (request,) = receiver.wait_for(1)
        _wait_outbox_empty(hooked, sync_redis)
    assert request.headers["webhook-id"] == claimed.id
    assert request.body == claimed.body()
    _check_signed(request.headers, request.body)


def test_the_deployment_url_hears_of_jobs_that_name_none(
    hooked: ServiceSettings,
    sync_redis: redis.Redis,
    start_deliverer: Callable[[ServiceSettings], WebhookDeliverer],
) -> None:
    with running_receiver() as receiver:
        deployment = hooked.model_copy(update={"webhook_url": receiver.url})
        with TestClient(create_app(deployment)) as client:
            video_id = _submit(client)
            _finish(deployment, sync_redis)
            start_deliverer(deployment)
            (request,) = receiver.wait_for(1)
    assert json.loads(request.body)["data"] == {"id": video_id}


@pytest.mark.parametrize(
    ("url", "quoted"),
    [
        ("http://example.com/hook", "host 'example.com' is not allowed"),
        ("http://127.0.0.1.evil.com/hook", "is not allowed"),
        ("ftp://127.0.0.1/hook", "scheme must be http or https"),
        ("http://[::1/hook", "not a URL"),
        ("http://127.0.0.1:99999/hook", "not a URL"),
        ("not-a-url", "scheme must be"),
        ("http://user:pw@127.0.0.1/hook", "no credentials"),
    ],
)
def test_a_bad_webhook_url_is_refused_at_submit(
    hooked: ServiceSettings, url: str, quoted: str
) -> None:
    with TestClient(create_app(hooked)) as client:
        response = client.post("/v1/videos", json={"prompt": "x", "webhook_url": url})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "webhook_url" and quoted in error["message"], error
        assert client.get("/v1/videos").json()["data"] == []  # nothing was made


def test_no_allowed_hosts_means_no_request_may_name_a_url(settings: ServiceSettings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/videos", json={"prompt": "x", "webhook_url": "https://127.0.0.1/h"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "webhook_url"
        assert "QVGEN_WEBHOOK_ALLOWED_HOSTS" in response.json()["error"]["message"]


def test_outside_development_only_https_urls_pass() -> None:
    allowed = ("127.0.0.1", "*.hooks.example")
    policy = WebhookPolicy.build(https_only=True, ports=("443",), allow_private=True)
    with pytest.raises(WebhookUrlError, match="scheme must be https"):
        check_webhook_url("http://127.0.0.1/h", allowed, policy)
    assert check_webhook_url("https://127.0.0.1/h", allowed, policy)
    assert check_webhook_url("https://a.hooks.example/h", allowed, policy)
    with pytest.raises(WebhookUrlError, match="not allowed"):
        check_webhook_url("https://hooks.example/h", allowed, policy)


@pytest.mark.parametrize(
    ("values", "quoted"),
    [
        ({"webhook_allowed_hosts": "a.example"}, "QVGEN_WEBHOOK_SECRET is not set"),
        ({"webhook_url": "https://a.example/h"}, "QVGEN_WEBHOOK_SECRET is not set"),
        ({"webhook_secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "whsec_<base64"),
        ({"webhook_secret": "whsec_not*base64"}, "whsec_<base64"),
        ({"webhook_url": "ftp://a.example/h", "webhook_secret": SECRET}, "http(s) URL"),
    ],
)
def test_webhook_settings_refuse_what_could_not_work(values: dict[str, str], quoted: str) -> None:
    with pytest.raises(ValidationError, match=quoted.replace("(", r"\(").replace(")", r"\)")):
        ServiceSettings(**values)  # type: ignore[arg-type]


def test_retry_delays_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        step = min(60.0, 1.0 * 2 ** (attempt - 1))
        delays = [retry_delay_s(attempt, 1.0, 60.0, rng) for _ in range(50)]
        assert all(step / 2 <= delay <= step for delay in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jittered


def test_a_job_expired_in_the_queue_is_announced_as_failed_and_a_deleted_one_not_at_all(
    hooked: ServiceSettings, sync_redis: redis.Redis
) -> None:
    short = hooked.model_copy(update={"queued_ttl_s": 1})
    url = "http://127.0.0.1:1024/hooks"
    with TestClient(create_app(short)) as client:
        expiring = _submit(client, webhook_url=url)
        deleted = _submit(client, webhook_url=url)
        assert client.delete(f"/v1/videos/{deleted}").status_code == 200
        time.sleep(1.1)  # past the queue deadline
        assert Consumer(sync_redis, short, "tiny", "janitor").expire_queued() == 1
    keys = Keys(short.key_prefix)
    assert sync_redis.zrange(keys.webhooks_due, 0, -1) == [webhook_event_id(expiring)]
    event = sync_redis.hgetall(keys.webhook(webhook_event_id(expiring)))
    assert (event["type"], event["video_id"], event["url"]) == ("video.failed", expiring, url)
