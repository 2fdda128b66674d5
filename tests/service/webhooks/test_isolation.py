"""One tenant's webhook receiver cannot hurt the others' deliveries:
attacks on loopback against the real deliverer loop and a real Redis, each bounded in time."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from service.api.main import create_app
from service.queue.keys import Keys
from service.settings import ServiceSettings
from service.webhooks.urls import parse_webhook_url, refused_address
from tests.service.webhooks.attackers import dribbling_receiver, flooding_receiver, put_event
from tests.service.webhooks.conftest import StartDeliverer
from tests.service.webhooks.receiver import WAIT_S, running_receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DEADLINE_S = 1.0


@pytest.fixture
def hooked(settings: ServiceSettings) -> ServiceSettings:
    return settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_allowed_hosts": ("127.0.0.1", "*.hooks.test"),
            "webhook_allow_private_addresses": True,
            "webhook_allowed_ports": ("1024-65535",),
            "webhook_timeout_s": DEADLINE_S,
            "webhook_max_attempts": 1,
        }
    )


def _until(condition: Callable[[], object], what: str, limit_s: float = WAIT_S) -> float:
    """Seconds until ``condition()`` holds; fails after ``limit_s``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit_s, f"{what}: not within {limit_s} s"
        time.sleep(0.01)
    return time.monotonic() - start


def _dead(client: redis.Redis, prefix: str) -> dict[str, dict[str, str]]:
    entries = client.xrange(Keys(prefix).webhooks_dead)
    return {fields["event"]: fields for _, fields in entries}


def _pending(client: redis.Redis, prefix: str, event_id: str) -> bool:
    return bool(client.exists(Keys(prefix).webhook(event_id)))


# --- item 2: the deliverer -------------------------------------------------------------------


def test_a_receiver_answering_a_byte_at_a_time_neither_outlives_the_deadline_nor_delays_others(
    hooked: ServiceSettings, sync_redis: redis.Redis, start_deliverer: StartDeliverer
) -> None:
    """Before: each read had its own timeout, so a byte every 0.25 s held the attempt as long
    as the receiver liked (8 s here), and the batch with it: another tenant's event, written
    meanwhile, waited for the batch to end."""
    prefix = hooked.key_prefix
    with dribbling_receiver(interval_s=0.25, for_s=8.0) as slow, running_receiver() as fair:
        slow_event = put_event(sync_redis, prefix, slow.url())
        start_deliverer(hooked)
        _until(lambda: slow.accepted, "the slow receiver's attempt")
        fair_event = put_event(sync_redis, prefix, fair.url)
        fair_wait_s = _until(lambda: fair.requests, "the other tenant's event")
        slow_s = _until(lambda: slow_event in _dead(sync_redis, prefix), "the slow attempt's end")
        _until(lambda: not _pending(sync_redis, prefix, fair_event), "the fair event's outcome")
    assert fair_wait_s < 3.0, fair_wait_s
    assert slow_s < DEADLINE_S + 3.0, slow_s
    assert "ReadTimeout" in _dead(sync_redis, prefix)[slow_event]["error"]


def test_a_huge_answer_is_read_only_to_a_small_cap(
    hooked: ServiceSettings, sync_redis: redis.Redis, start_deliverer: StartDeliverer
) -> None:
    """Before: the whole body was buffered (400 MB took the deliverer from 68 to 889 MB); here
    a 128 MB answer must be cut off after a few MB (the kernel's socket buffers) at most."""
    total = 128 << 20
    with flooding_receiver(total) as flood:
        event = put_event(sync_redis, hooked.key_prefix, flood.url())
        start_deliverer(hooked)
        _until(lambda: not _pending(sync_redis, hooked.key_prefix, event), "the outcome")
        _until(lambda: flood.bytes_sent, "the receiver's end")
    assert flood.bytes_sent[0] < 16 << 20, flood.bytes_sent
    assert _dead(sync_redis, hooked.key_prefix) == {}  # a 200: delivered


def test_a_slow_host_holds_at_most_its_share_and_others_finish_meanwhile(
    hooked: ServiceSettings, sync_redis: redis.Redis, start_deliverer: StartDeliverer
) -> None:
    """Six events for a receiver that holds every request, one for another host: at most
    ``webhook_concurrency_per_host`` attempts reach the first at once, and the other's
    outcome is recorded while they hang (before: all six at once, and the other's outcome
    waited for the batch)."""
    bounded = hooked.model_copy(
        update={"webhook_concurrency_per_host": 2, "webhook_timeout_s": 10.0}
    )
    hold = threading.Event()
    resolver = {"slow.hooks.test": ["127.0.0.1"], "fair.hooks.test": ["127.0.0.1"]}
    prefix = bounded.key_prefix
    with running_receiver(hold=hold) as slow, running_receiver() as fair:
        slow_events = [
            put_event(sync_redis, prefix, f"http://slow.hooks.test:{slow.port}/hooks")
            for _ in range(6)
        ]
        start_deliverer(bounded, lambda host, port: resolver[host])
        _until(lambda: slow.in_flight == 2, "two held attempts")
        fair_event = put_event(sync_redis, prefix, f"http://fair.hooks.test:{fair.port}/hooks")
        _until(lambda: not _pending(sync_redis, prefix, fair_event), "the fair outcome")
        time.sleep(0.3)  # room for attempts past the bound, were there any
        assert (slow.in_flight, slow.most_in_flight) == (2, 2)
        hold.set()
        _until(lambda: len(slow.requests) == 6, "the held events, released")
        for event in slow_events:
            _until(lambda e=event: not _pending(sync_redis, prefix, e), "their outcomes")
    assert slow.most_in_flight == 2
    assert _dead(sync_redis, prefix) == {}  # one attempt each: postponing counted none


# --- item 3: SSRF through DNS ---------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "10.1.2.3", "::1"])
def test_a_name_resolving_to_an_internal_address_gets_no_request(
    hooked: ServiceSettings,
    sync_redis: redis.Redis,
    start_deliverer: StartDeliverer,
    address: str,
) -> None:
    """Before: the host was checked as written, and the deliverer connected wherever an
    allowed name resolved: a name resolving to 127.0.0.1 got signed POSTs."""
    strict = hooked.model_copy(update={"webhook_allow_private_addresses": False})
    prefix = strict.key_prefix
    with running_receiver() as receiver:
        url = f"http://evil.hooks.test:{receiver.port}/hooks"
        with TestClient(create_app(strict)) as client:
            response = client.post("/v1/videos", json={"prompt": "x", "webhook_url": url})
            assert response.status_code == 200, response.text  # a name: judged at connect time
        event = put_event(sync_redis, prefix, url)
        start_deliverer(strict, lambda host, port: [address])
        _until(lambda: event in _dead(sync_redis, prefix), "the refused attempt")
        time.sleep(0.2)
    assert receiver.requests == []
    error = _dead(sync_redis, prefix)[event]["error"]
    assert "AddressRefused" in error and "resolves to no allowed address" in error, error


def test_the_address_checked_is_the_one_connected_and_the_name_is_kept(
    hooked: ServiceSettings, sync_redis: redis.Redis, start_deliverer: StartDeliverer
) -> None:
    """One resolution per attempt, the connection to its address, the URL's host in ``Host``
    (a second lookup is what DNS rebinding needs)."""
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["192.0.2.1"]  # rebinding

    with running_receiver() as receiver:
        put_event(sync_redis, hooked.key_prefix, f"http://a.hooks.test:{receiver.port}/hooks")
        start_deliverer(hooked, resolver)
        (request,) = receiver.wait_for(1)
    assert lookups == ["a.hooks.test"]
    assert request.headers["host"] == f"a.hooks.test:{receiver.port}"


@pytest.mark.parametrize(
    ("url", "quoted"),
    [
        ("http://127.0.0.1\\.a.hooks.test:8080/h", "backslashes"),
        ("http://127.0.0.1%2f.a.hooks.test:8080/h", "percent-escapes"),
        ("http://a.hooks.test\t:8080/h", "control characters"),
        ("http://a.hooks\n.test:8080/h", "control characters"),
        ("http://a_b.hooks.test:8080/h", "not a DNS name"),
        ("http://127.1/h", "not written as a.b.c.d"),
        ("http://a.hooks.test:22/h", "port 22 is not allowed"),
        ("http://[::1]:8080/h", "not allowed"),
    ],
)
def test_a_malformed_or_disallowed_url_is_refused_at_submit(
    hooked: ServiceSettings, url: str, quoted: str
) -> None:
    """Before: hosts were matched as written, so these (ending in an allowed suffix) were
    accepted and dead-lettered later."""
    strict = hooked.model_copy(
        update={"webhook_allow_private_addresses": False, "webhook_allowed_ports": ("8080",)}
    )
    with TestClient(create_app(strict)) as client:
        response = client.post("/v1/videos", json={"prompt": "x", "webhook_url": url})
        assert response.status_code == 400, (url, response.text)
        error = response.json()["error"]
        assert error["param"] == "webhook_url" and quoted in error["message"], error


def test_an_ip_literal_host_must_be_a_public_address(hooked: ServiceSettings) -> None:
    strict = hooked.model_copy(
        update={
            "webhook_allow_private_addresses": False,
            "webhook_allowed_hosts": ("127.0.0.1", "10.0.0.1", "8.8.8.8"),
        }
    )
    with TestClient(create_app(strict)) as client:
        for host, status in (("127.0.0.1", 400), ("10.0.0.1", 400), ("8.8.8.8", 200)):
            url = f"http://{host}:8080/h"
            response = client.post("/v1/videos", json={"prompt": "x", "webhook_url": url})
            assert response.status_code == status, (host, response.text)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback (inside ::ffff:7f00:1)"),
        ("::ffff:169.254.169.254", "link-local (inside ::ffff:a9fe:a9fe)"),
        ("2002:7f00:1::", "loopback (inside 2002:7f00:1::)"),  # 6to4
        ("64:ff9b::a00:1", "private (inside 64:ff9b::a00:1)"),  # NAT64
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_internal_addresses_are_refused_in_every_spelling(address: str, why: str | None) -> None:
    assert refused_address(ipaddress.ip_address(address)) == why


def test_the_parser_keeps_the_host_for_the_header_and_tls() -> None:
    target = parse_webhook_url("https://A.Hooks.Test./p?q=1")
    assert (target.host, target.port, target.target) == ("a.hooks.test", 443, "/p?q=1")
    assert target.host_header == "a.hooks.test"
    assert parse_webhook_url("http://[::1]:8080").host_header == "[::1]:8080"


def test_production_refuses_private_addresses() -> None:
    with pytest.raises(ValidationError, match="QVGEN_WEBHOOK_ALLOW_PRIVATE_ADDRESSES"):
        ServiceSettings(
            environment="production",  # type: ignore[arg-type]
            api_keys=(SecretStr("k" * 32),),
            webhook_allow_private_addresses=True,
        )
    with pytest.raises(ValidationError, match="QVGEN_WEBHOOK_ALLOWED_PORTS"):
        ServiceSettings(webhook_allowed_ports=("0",))  # type: ignore[arg-type]
