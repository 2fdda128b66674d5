"""``qvgen serve webhooks`` as the process a deployment runs: it delivers what the outbox holds,
stops cleanly on SIGTERM, and refuses to start without a secret in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from benchmarks.service import settings_environment
from service.api.main import create_app
from service.queue.consumer import Consumer
from service.settings import ServiceSettings
from tests.deploy.compose import wait_until
from tests.service.redis_fixtures import free_port
from tests.service.webhooks.receiver import WAIT_S, running_receiver, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
COMMAND = [sys.executable, "-m", "service.cli", "--log-level", "WARNING", "serve", "webhooks"]


def test_the_deliverer_process_sends_the_outbox_and_stops_on_sigterm(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    """...and counts the attempt on its metrics port."""
    port = free_port()
    hooked = settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_allowed_hosts": ("127.0.0.1",),
            "webhook_allow_private_addresses": True,
            "webhook_allowed_ports": ("1024-65535",),
            "webhook_metrics_port": port,
        }
    )
    with running_receiver() as receiver, TestClient(create_app(hooked)) as client:
        video_id = client.post(
            "/v1/videos", json={"prompt": "x", "webhook_url": receiver.url}
        ).json()["id"]
        consumer = Consumer(sync_redis, hooked, "tiny", "hand")
        delivery = consumer.next_job(block_ms=200)
        assert delivery is not None and delivery.claim is not None
        assert consumer.complete(delivery.claim, "/r/v.mp4", "/r/t.png")
        # Written while no deliverer runs; the process started now finds it in Redis.
        process = subprocess.Popen(COMMAND, env={**os.environ, **settings_environment(hooked)})
        try:
            (request,) = receiver.wait_for(1)
            delivered = (
                'qvgen_webhook_attempts_total{event="video.completed",outcome="delivered"} 1.0'
            )
            metrics = wait_until(
                lambda: _metrics_with(port, delivered), WAIT_S, "the attempt on /metrics", 0.1
            )
            assert "qvgen_webhook_attempt_seconds_count 1.0" in metrics
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=WAIT_S)
    assert returncode == 0
    verify(SECRET, request.headers, request.body)
    assert video_id in request.body.decode()


def _metrics_with(port: int, line: str) -> str | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None  # not listening yet
    return text if line in text.splitlines() else None


def test_the_deliverer_refuses_to_start_without_a_secret(settings: ServiceSettings) -> None:
    env = {**os.environ, **settings_environment(settings)}
    done = subprocess.run(COMMAND, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "qvgen serve webhooks: QVGEN_WEBHOOK_SECRET is not set (nor "
        "QVGEN_WEBHOOK_MASTER_SECRET with API keys): there is nothing to sign with"
    ], done.stderr
