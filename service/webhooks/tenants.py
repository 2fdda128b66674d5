"""Each API key's own webhook signing secret and allowed hosts.

Why derived secrets: the deliverer must sign with a key's secret, so a one-way hash of it (as
for API keys) cannot serve, and encrypting stored secrets would still need a server key to
decrypt them. Deriving needs that one server key and stores nothing secret at all:

    secret(owner, n) = "whsec_" + base64(HMAC-SHA256(M, "qvgen-webhook-secret/v1" 0x00 owner 0x00 n))

where ``M`` is ``QVGEN_WEBHOOK_MASTER_SECRET`` (≥ 32 random bytes), ``owner`` the key's digest
that its jobs carry (``service.api.auth``) and ``n`` the key's generation, a counter in Redis
(``P:webhook-key:<owner>``, field ``generation``; 0 until an admin first creates the secret).
HMAC is a PRF: one key's secret, or any number of them, tells nothing of another's or of ``M``.
Redis holds only counters and host lists, so its backups, replicas and AOF leak no secret; a
leaked ``M`` leaks every key's secret (rotate it, and every key's secret changes: the operator
hands out new ones). Rotation = increment ``n`` and show the new secret once (the admin route
``service.api.routes.webhook_keys``); no route shows a secret again. The deliverer reads ``n``
when it claims an event (in the claim script), so every attempt after a rotation is signed with
the new secret and the old one verifies none of them.

Allowed hosts: a key with a list of its own may name only those hosts in ``webhook_url``; a key
without one falls back to ``QVGEN_WEBHOOK_ALLOWED_HOSTS`` (hosts any key may name: empty in a
multi-tenant deployment). The key's list replaces the global one rather than adding to it, so
that an admin can also narrow what one key may name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis import asyncio as aioredis

from service.queue.keys import Keys
from service.webhooks.signing import SECRET_PREFIX
from service.webhooks.urls import check_host_pattern

_CONTEXT = b"qvgen-webhook-secret/v1"
GENERATION_FIELD = "generation"
HOSTS_FIELD = "allowed_hosts"
MAX_HOSTS = 64


def derive_secret(master: bytes, owner: str, generation: int) -> str:
    """The ``whsec_`` secret of ``owner`` at ``generation`` (see the module's docstring)."""
    message = b"\0".join((_CONTEXT, owner.encode(), str(generation).encode()))
    key = hmac.new(master, message, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def master_key(text: str) -> bytes:
    """The key of ``QVGEN_WEBHOOK_MASTER_SECRET`` (``ServiceSettings`` checked its form)."""
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class KeyWebhooks:
    """One key's webhook settings: ``generation`` 0 means no secret was created yet."""

    generation: int = 0
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> KeyWebhooks:
        hosts = json.loads(fields.get(HOSTS_FIELD) or "[]")
        return cls(int(fields.get(GENERATION_FIELD) or 0), tuple(hosts))

    def hosts_for(self, global_hosts: Sequence[str]) -> tuple[str, ...]:
        """The hosts this key may name: its own list, or else the global one."""
        return self.allowed_hosts or tuple(global_hosts)


def checked_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """``hosts`` normalised, duplicates dropped; ``WebhookUrlError`` naming a bad entry."""
    if len(hosts) > MAX_HOSTS:
        raise ValueError(f"{len(hosts)} hosts; at most {MAX_HOSTS}")
    return tuple(dict.fromkeys(check_host_pattern(host) for host in hosts))


class KeyWebhookStore:
    """The keys' webhook settings in Redis, through the API's asynchronous client."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys

    async def read(self, owner: str) -> KeyWebhooks:
        fields: dict[str, str] = await self._redis.hgetall(self._keys.webhook_key(owner))  # type: ignore[assignment]
        return KeyWebhooks.from_hash(fields)

    async def rotate(self, owner: str) -> int:
        """The key's next generation (1 for its first secret); the old secret signs no more."""
        key = self._keys.webhook_key(owner)
        return int(await self._redis.hincrby(key, GENERATION_FIELD, 1))

    async def set_hosts(self, owner: str, hosts: Sequence[str]) -> None:
        key = self._keys.webhook_key(owner)
        await self._redis.hset(key, HOSTS_FIELD, json.dumps(list(hosts)))
