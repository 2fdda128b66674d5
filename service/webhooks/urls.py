"""Which ``webhook_url`` a create request may name.

The deliverer posts to whatever URL a job names, from inside the deployment's network; a URL
any client could choose would let it reach internal services (SSRF). So a request's URL must
name a host the operator allowed (``QVGEN_WEBHOOK_ALLOWED_HOSTS``: exact names, or
``*.example.com`` for the subdomains of example.com) and, outside development, use https. The
host is compared as written: a name that resolves elsewhere later (DNS rebinding) is the
operator's DNS to guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048


class WebhookUrlError(ValueError):
    """The URL is malformed or not allowed; the message says which and what would be."""


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def check_webhook_url(url: str, allowed_hosts: Sequence[str], *, https_only: bool) -> str:
    """``url`` if a request may name it, else ``WebhookUrlError``."""
    if not allowed_hosts:
        raise WebhookUrlError(
            "this server accepts no per-request webhook URL (QVGEN_WEBHOOK_ALLOWED_HOSTS is "
            "empty); leave webhook_url out"
        )
    if len(url) > MAX_URL_CHARS:
        raise WebhookUrlError(f"{len(url)} characters; at most {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in [0, 65535]
    except ValueError as error:
        raise WebhookUrlError(f"not a URL ({error}): {url!r:.200}") from error
    schemes = ("https",) if https_only else ("http", "https")
    if parts.scheme not in schemes:
        raise WebhookUrlError(f"scheme must be {' or '.join(schemes)}; got {url!r:.200}")
    host = (parts.hostname or "").rstrip(".")
    if not host or parts.username is not None or parts.password is not None:
        raise WebhookUrlError(f"must name a host and no credentials; got {url!r:.200}")
    if port == 0:
        raise WebhookUrlError(f"port 0 is not a port; got {url!r:.200}")
    if not _host_allowed(host, allowed_hosts):
        raise WebhookUrlError(
            f"host {host!r:.100} is not allowed; allowed: {', '.join(allowed_hosts)}"
        )
    return url
