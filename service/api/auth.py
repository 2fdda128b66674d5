"""Bearer API keys: ``Authorization: Bearer <key>``, compared as digests in constant time, never
logged.

Each job belongs to the key that created it (its owner: the key's SHA-256, hex). A caller sees
only its own jobs; a key of ``admin_api_keys`` sees every job. With no keys configured
(development) there is no identity: every caller sees every job.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from service.api.errors import APIError, ErrorType
from service.settings import ServiceSettings

_BEARER = "bearer "


@dataclass(frozen=True)
class Caller:
    """Who sent a request: ``owner`` is the digest its jobs carry ("" without keys)."""

    owner: str
    admin: bool

    def sees(self, owner: str) -> bool:
        return self.admin or owner == self.owner


ANONYMOUS = Caller(owner="", admin=True)


def key_digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyRing:
    """The configured keys as SHA-256 digests: every comparison is of 32 bytes with 32 bytes, so
    its time says nothing about a key's length or prefix."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._keys = tuple(key_digest(secret) for secret in settings.key_secrets())
        self._admins = tuple(key_digest(secret) for secret in settings.admin_key_secrets())

    def owners(self) -> frozenset[str]:
        """The owner ids (digests, hex) of every configured key, admin keys included."""
        return frozenset(digest.hex() for digest in self._keys + self._admins)

    @property
    def enabled(self) -> bool:
        return bool(self._keys or self._admins)

    def authenticate(self, request: Request) -> Caller:
        """The caller of ``request``; raises 401 when keys are on and none of them was sent."""
        if not self.enabled:
            return ANONYMOUS
        presented = _presented_key(request.headers.get("authorization", ""))
        digest, user, admin = self._match(presented)
        if presented is None or not (user or admin):
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                type=ErrorType.AUTHENTICATION,
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Caller(owner=digest.hex(), admin=admin)

    def tenant(self, authorization: bytes) -> str:
        """Whom a raw ``Authorization`` header speaks for, for per-key limits: the key's owner
        digest, or ``UNAUTHENTICATED`` for every header that names no configured key."""
        presented = _presented_key(authorization.decode("latin-1"))
        digest, user, admin = self._match(presented)
        return digest.hex() if presented is not None and (user or admin) else UNAUTHENTICATED

    def _match(self, presented: bytes | None) -> tuple[bytes, bool, bool]:
        digest = key_digest(presented or b"")
        # Compare against every key, always: the time taken says nothing about which one matched.
        user = admin = False
        for known in self._keys:
            user |= hmac.compare_digest(known, digest)
        for known in self._admins:
            admin |= hmac.compare_digest(known, digest)
        return digest, user, admin


def require_admin(caller: Caller) -> None:
    """403 unless ``caller`` holds an admin key (its key is valid: ``authenticate`` passed)."""
    if not caller.admin:
        raise APIError(
            403,
            "this route needs an admin API key (QVGEN_ADMIN_API_KEYS)",
            type=ErrorType.PERMISSION,
            code="admin_key_required",
        )


# The tenant of requests without a valid key: together they get one key's share of the API.
UNAUTHENTICATED = "unauthenticated"


def _presented_key(header: str) -> bytes | None:
    if header[: len(_BEARER)].lower() != _BEARER:
        return None
    return header[len(_BEARER) :].strip().encode()
