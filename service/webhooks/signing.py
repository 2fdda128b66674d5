"""Standard Webhooks signatures (standardwebhooks.com; the scheme OpenAI's webhooks use).

Each delivery attempt carries three headers:

- ``webhook-id``: the event id, the same on every attempt (receivers deduplicate by it);
- ``webhook-timestamp``: the attempt's time, unix seconds (receivers refuse old ones: replays);
- ``webhook-signature``: ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}." + body)),

where the key is the base64-decoded part of the secret ``whsec_<base64>``. Only the exact bytes
sent are signed: the body must not be re-serialised between signing and sending.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (``ServiceSettings`` checked its form)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(key: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, event_id, timestamp, body),
    }
