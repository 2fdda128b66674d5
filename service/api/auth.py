"""Bearer API keys: ``Authorization: Bearer <key>``, compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from service.api.errors import APIError, ErrorType
from service.settings import ServiceSettings

_BEARER = "bearer "


def _presented_key(request: Request) -> bytes | None:
    header = request.headers.get("authorization", "")
    if header[: len(_BEARER)].lower() != _BEARER:
        return None
    return header[len(_BEARER) :].strip().encode()


def authenticate(request: Request, settings: ServiceSettings) -> str:
    """Check the bearer key; returns the caller's scope (a digest of the key, or "" when keys
    are off) for idempotency keys. Raises 401."""
    secrets = settings.key_secrets()
    if not secrets:
        return ""
    presented = _presented_key(request)
    # Compare against every key, always: the time taken says nothing about which key or prefix
    # matched.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(secret, presented or b"")
    if presented is None or not matched:
        raise APIError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            type=ErrorType.AUTHENTICATION,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return hashlib.sha256(presented).hexdigest()
