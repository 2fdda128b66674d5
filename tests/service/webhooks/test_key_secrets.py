"""Per-key webhook secrets and allowed hosts: two tenants on one deployment,
a real Redis, the real deliverer loop and real HTTP receivers on loopback. Before: one secret
(``QVGEN_WEBHOOK_SECRET``) signed every tenant's events and one host list served every key."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from service.api.main import create_app
from service.queue.consumer import Consumer
from service.settings import ServiceSettings
from service.webhooks.tenants import derive_secret
from tests.service.webhooks.attackers import put_event
from tests.service.webhooks.conftest import StartDeliverer
from tests.service.webhooks.receiver import InvalidSignature, Received, running_receiver, verify

ALICE, BOB, ADMIN = "key-alice", "key-bob-is-longer", "key-admin"
MASTER = base64.b64encode(b"m" * 16 + b"a master of 32 b").decode()
SINGLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _owner(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _loopback(host: str, port: int) -> list[str]:
    """Every tenant's receiver name resolves to loopback (allowed in tests)."""
    return ["127.0.0.1"]


@pytest.fixture
def tenants(settings: ServiceSettings) -> ServiceSettings:
    return settings.model_copy(
        update={
            "api_keys": (SecretStr(ALICE), SecretStr(BOB)),
            "admin_api_keys": (SecretStr(ADMIN),),
            "webhook_master_secret": SecretStr(MASTER),
            "webhook_allow_private_addresses": True,
            "webhook_allowed_ports": ("1024-65535",),
            "webhook_retry_base_s": 0.05,
            "webhook_retry_max_s": 0.2,
        }
    )


@pytest.fixture
def api(tenants: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(tenants)) as client:
        yield client


def _new_secret(client: TestClient, key: str) -> str:
    response = client.post(f"/v1/admin/webhooks/{_owner(key)}/secret", headers=_as(ADMIN))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    secret = response.json()["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    return str(secret)


def _allow(client: TestClient, key: str, *hosts: str) -> None:
    response = client.put(
        f"/v1/admin/webhooks/{_owner(key)}/allowed_hosts",
        headers=_as(ADMIN),
        json={"allowed_hosts": list(hosts)},
    )
    assert response.status_code == 200, response.text
    assert response.json()["allowed_hosts"] == list(hosts)


def _submit(client: TestClient, key: str, url: str) -> int:
    response = client.post(
        "/v1/videos", headers=_as(key), json={"prompt": "a red ball", "webhook_url": url}
    )
    return response.status_code


def _finish_all(settings: ServiceSettings, client: redis.Redis, count: int) -> None:
    consumer = Consumer(client, settings, "tiny", "hand")
    for _ in range(count):
        delivery = consumer.next_job(block_ms=200)
        assert delivery is not None and delivery.claim is not None
        assert consumer.complete(delivery.claim, "/r/v.mp4", "/r/t.png")


def _verifies(secret: str, request: Received) -> bool:
    try:
        verify(secret, request.headers, request.body)
    except InvalidSignature:
        return False
    return True


def test_a_tenants_secret_verifies_its_own_events_and_no_other_tenants(
    tenants: ServiceSettings,
    api: TestClient,
    sync_redis: redis.Redis,
    start_deliverer: StartDeliverer,
) -> None:
    """Before: both events were signed with QVGEN_WEBHOOK_SECRET, which each tenant held, so
    Alice could verify, and forge, Bob's events."""
    alice_secret, bob_secret = _new_secret(api, ALICE), _new_secret(api, BOB)
    assert alice_secret != bob_secret
    _allow(api, ALICE, "alice.hooks.test")
    _allow(api, BOB, "bob.hooks.test")
    with running_receiver() as alices, running_receiver() as bobs:
        assert _submit(api, ALICE, f"http://alice.hooks.test:{alices.port}/h") == 200
        assert _submit(api, BOB, f"http://bob.hooks.test:{bobs.port}/h") == 200
        _finish_all(tenants, sync_redis, 2)
        start_deliverer(tenants, _loopback)
        (to_alice,) = alices.wait_for(1)
        (to_bob,) = bobs.wait_for(1)
    assert _verifies(alice_secret, to_alice) and _verifies(bob_secret, to_bob)
    assert not _verifies(alice_secret, to_bob), "Alice's secret verifies Bob's event"
    assert not _verifies(bob_secret, to_alice), "Bob's secret verifies Alice's event"
    assert json.loads(to_bob.body)["type"] == "video.completed"


def test_a_tenant_cannot_send_a_webhook_to_a_host_only_another_is_allowed(
    tenants: ServiceSettings, sync_redis: redis.Redis
) -> None:
    """Before: one list (QVGEN_WEBHOOK_ALLOWED_HOSTS) for every key: a host allowed for Bob
    was allowed for Alice."""
    shared = tenants.model_copy(update={"webhook_allowed_hosts": ("*.shared.test",)})
    with TestClient(create_app(shared)) as api:
        # No secret yet: the key could not verify its events, so it may name no URL.
        response = api.post(
            "/v1/videos",
            headers=_as(ALICE),
            json={"prompt": "x", "webhook_url": "http://a.shared.test:8080/h"},
        )
        assert response.status_code == 400 and "no webhook secret" in response.text
        _new_secret(api, ALICE)
        _new_secret(api, BOB)
        _allow(api, BOB, "bob.hooks.test")
        response = api.post(
            "/v1/videos",
            headers=_as(ALICE),
            json={"prompt": "x", "webhook_url": "http://bob.hooks.test:8080/h"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "webhook_url" and "not allowed" in error["message"]
        assert _submit(api, BOB, "http://bob.hooks.test:8080/h") == 200
        # Alice has no list of her own: the global one applies; Bob's replaces it.
        assert _submit(api, ALICE, "http://a.shared.test:8080/h") == 200
        assert _submit(api, BOB, "http://a.shared.test:8080/h") == 400


def test_rotation_leaves_the_old_secret_verifying_no_new_event(
    tenants: ServiceSettings,
    api: TestClient,
    sync_redis: redis.Redis,
    start_deliverer: StartDeliverer,
) -> None:
    first = _new_secret(api, ALICE)
    second = _new_secret(api, ALICE)
    assert first != second
    view = api.get(f"/v1/admin/webhooks/{_owner(ALICE)}", headers=_as(ADMIN))
    assert view.status_code == 200 and view.json()["generation"] == 2
    with running_receiver() as receiver:
        put_event(sync_redis, tenants.key_prefix, receiver.url, owner=_owner(ALICE))
        start_deliverer(tenants)
        (request,) = receiver.wait_for(1)
    assert _verifies(second, request) and not _verifies(first, request)


def test_an_event_without_an_owner_keeps_the_single_tenant_secret(
    tenants: ServiceSettings,
    api: TestClient,
    sync_redis: redis.Redis,
    start_deliverer: StartDeliverer,
) -> None:
    """Events in the outbox from before per-key secrets carry no owner."""
    both = tenants.model_copy(update={"webhook_secret": SecretStr(SINGLE)})
    alice_secret = _new_secret(api, ALICE)
    with running_receiver() as old, running_receiver() as new:
        put_event(sync_redis, both.key_prefix, old.url)
        put_event(sync_redis, both.key_prefix, new.url, owner=_owner(ALICE))
        start_deliverer(both)
        (legacy,) = old.wait_for(1)
        (owned,) = new.wait_for(1)
    assert _verifies(SINGLE, legacy)
    assert _verifies(alice_secret, owned) and not _verifies(SINGLE, owned)


def test_the_admin_routes_refuse_other_keys_and_show_a_secret_once(
    tenants: ServiceSettings, api: TestClient
) -> None:
    path = f"/v1/admin/webhooks/{_owner(ALICE)}"
    calls = (
        ("get", path, None),
        ("post", f"{path}/secret", None),
        ("put", f"{path}/allowed_hosts", {"allowed_hosts": ["alice.hooks.test"]}),
    )
    for method, url, body in calls:
        assert api.request(method, url, json=body).status_code == 401
        for key in (ALICE, BOB):
            refused = api.request(method, url, json=body, headers=_as(key))
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["type"] == "permission_error"
    secret = _new_secret(api, ALICE)
    master = base64.b64decode(MASTER)
    assert secret == derive_secret(master, _owner(ALICE), 1)
    shown = api.get(path, headers=_as(ADMIN))
    assert shown.status_code == 200 and "secret" not in shown.json()
    assert secret not in shown.text and secret[6:] not in shown.text
    unknown = api.post(f"/v1/admin/webhooks/{'0' * 64}/secret", headers=_as(ADMIN))
    assert unknown.status_code == 404
    bad_host = api.put(
        f"{path}/allowed_hosts", headers=_as(ADMIN), json={"allowed_hosts": ["a b.test"]}
    )
    assert bad_host.status_code == 400 and "allowed_hosts" in bad_host.text


def test_the_admin_routes_say_when_per_key_secrets_are_off(tenants: ServiceSettings) -> None:
    off = tenants.model_copy(update={"webhook_master_secret": SecretStr("")})
    with TestClient(create_app(off)) as api:
        response = api.post(f"/v1/admin/webhooks/{_owner(ALICE)}/secret", headers=_as(ADMIN))
    assert response.status_code == 409 and "QVGEN_WEBHOOK_MASTER_SECRET" in response.text


@pytest.mark.parametrize(
    ("values", "quoted"),
    [
        ({"webhook_master_secret": "not*base64"}, "QVGEN_WEBHOOK_MASTER_SECRET must be base64"),
        ({"webhook_master_secret": base64.b64encode(b"x" * 31).decode()}, "at least 32 bytes"),
        (
            {"webhook_allowed_hosts": "a.example,*.*.b", "webhook_secret": SINGLE},
            "QVGEN_WEBHOOK_ALLOWED_HOSTS: '\\*.\\*.b' is not a host name",
        ),
        ({"webhook_allowed_hosts": "a.example"}, "QVGEN_WEBHOOK_SECRET is not set"),
        (
            {
                "environment": "production",
                "api_keys": "k1,k2",
                "webhook_allowed_hosts": "hooks.example",
                "webhook_secret": SINGLE,
            },
            "without QVGEN_WEBHOOK_MASTER_SECRET",
        ),
    ],
)
def test_webhook_key_settings_refuse_bad_values_at_start(
    values: dict[str, str], quoted: str
) -> None:
    with pytest.raises(ValidationError, match=quoted):
        ServiceSettings(**values)  # type: ignore[arg-type]


def test_production_takes_per_key_secrets_without_a_single_tenant_secret() -> None:
    settings = ServiceSettings(
        environment="production",  # type: ignore[arg-type]
        api_keys="k1,k2",  # type: ignore[arg-type]
        webhook_allowed_hosts="hooks.example",  # type: ignore[arg-type]
        webhook_master_secret=MASTER,  # type: ignore[arg-type]
    )
    assert settings.per_key_webhook_secrets and settings.webhooks_enabled
