from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator

import pytest

from service.settings import ServiceSettings
from service.webhooks.deliverer import WebhookDeliverer
from service.webhooks.urls import Resolver, resolve
from tests.service.redis_fixtures import redis_server, settings, sync_redis
from tests.service.webhooks.receiver import WAIT_S

__all__ = ["redis_server", "settings", "start_deliverer", "sync_redis"]

StartDeliverer = Callable[..., WebhookDeliverer]


@pytest.fixture
def start_deliverer() -> Iterator[StartDeliverer]:
    """Start the real deliverer loop in a thread (``resolver``: the name lookups it makes);
    stopped, and checked stopped, after the test."""
    started: list[tuple[WebhookDeliverer, threading.Thread]] = []

    def start(settings: ServiceSettings, resolver: Resolver = resolve) -> WebhookDeliverer:
        deliverer = WebhookDeliverer(settings, rng=random.Random(0), resolver=resolver)
        thread = threading.Thread(target=deliverer.run, daemon=True)
        thread.start()
        started.append((deliverer, thread))
        return deliverer

    yield start
    for deliverer, thread in started:
        deliverer.request_stop()
        thread.join(timeout=WAIT_S)
        assert not thread.is_alive()
