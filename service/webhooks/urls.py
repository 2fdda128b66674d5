"""Which webhook URLs may be named, and which addresses the deliverer may connect to.

The deliverer posts from inside the deployment's network to whatever URL a job names; a URL any
client could choose would let it reach internal services (SSRF). Three checks stand in the way:

1. At submit (``check_webhook_url``): the URL is parsed by ``parse_webhook_url``, the one
   parser the deliverer also uses, strictly (no control characters, spaces, backslashes,
   percent-escapes or credentials in the authority; a host is a DNS name of letters, digits
   and hyphens, a canonical dotted IPv4 address or a bracketed IPv6 address), its host must be
   one the operator allowed (the key's own list, else ``QVGEN_WEBHOOK_ALLOWED_HOSTS``:
   ``service.webhooks.tenants``; exact names, or ``*.example.com`` for the subdomains), its port one of ``QVGEN_WEBHOOK_ALLOWED_PORTS`` and,
   outside development, its scheme https. An IP literal must also pass the address check.
2. At connect time (``PinnedBackend``): the deliverer resolves the host itself (``resolve``,
   the seam tests replace), drops every address that is not globally routable
   (``refused_address``: loopback, private, link-local, multicast, reserved, unspecified,
   shared, documentation..., IPv4 embedded in IPv6 included), and connects to a checked address
   only. Nothing resolves the name a second time, so a name that resolves to a public address
   for the check and to 127.0.0.1 for the connection (DNS rebinding) gains nothing. The
   request keeps the name: the ``Host`` header and TLS's server name and certificate check are
   the URL's host, not the address.
3. Every read and write of an attempt shares one deadline (``DeadlineStream``): a receiver
   cannot hold an attempt longer by answering a byte at a time.

``QVGEN_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` turns the address check off (development and tests,
whose receivers listen on 127.0.0.1; production refuses it). The deployment's own
``QVGEN_WEBHOOK_URL`` is the operator's choice, not a client's: it is exempt from the address
and port checks (see ``WebhookPolicy.trusting``), not from the deadline.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpcore

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port → the addresses it resolves to, in the order to try them.
Resolver = Callable[[str, int], Sequence[str]]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]|[^\x00-\x7f]")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class WebhookUrlError(ValueError):
    """The URL is malformed or not allowed; the message says which and what would be."""


class AddressRefused(httpcore.ConnectError):
    """The host resolved to no address the deliverer may connect to."""


@dataclass(frozen=True)
class WebhookTarget:
    """A parsed webhook URL: ``host`` is lower case, without a trailing dot or brackets."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent on the request line

    @property
    def literal(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def url(self) -> httpcore.URL:
        return httpcore.URL(
            scheme=self.scheme.encode(),
            host=self.host.encode(),
            port=self.port,
            target=self.target.encode(),
        )


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"443"`` or ``"8000-8999"``; ``ValueError`` quoting the text otherwise."""
        low, _, high = text.partition("-")
        try:
            bounds = cls(int(low), int(high or low))
        except ValueError:
            raise ValueError(f"{text!r} is not a port or a range LOW-HIGH") from None
        if not 1 <= bounds.low <= bounds.high <= 65535:
            raise ValueError(f"{text!r}: ports lie in 1-65535, low before high")
        return bounds

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high


@dataclass(frozen=True)
class WebhookPolicy:
    """What a webhook URL and the addresses it resolves to must satisfy."""

    https_only: bool
    ports: tuple[PortRange, ...]
    allow_private: bool

    @classmethod
    def build(cls, https_only: bool, ports: Iterable[str], allow_private: bool) -> WebhookPolicy:
        return cls(https_only, tuple(PortRange.parse(p) for p in ports), allow_private)

    def trusting(self) -> WebhookPolicy:
        """The policy for the operator's own URL: any port, any address."""
        return replace(self, ports=(PortRange(1, 65535),), allow_private=True)

    def port_allowed(self, port: int) -> bool:
        return any(port in allowed for allowed in self.ports)


def parse_webhook_url(url: str) -> WebhookTarget:
    """The one parser of webhook URLs (submit and delivery), strict where parsers differ."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookUrlError(f"{len(url)} characters; at most {MAX_URL_CHARS}")
    bad = _FORBIDDEN.search(url)
    if bad:
        raise WebhookUrlError(
            f"control characters, spaces, backslashes and non-ASCII characters are not allowed "
            f"(found {bad.group()!r}); percent-encode them in the path: {url!r:.200}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in [0, 65535]
    except ValueError as error:
        raise WebhookUrlError(f"not a URL ({error}): {url!r:.200}") from error
    if parts.scheme not in DEFAULT_PORTS:
        raise WebhookUrlError(f"scheme must be http or https; got {url!r:.200}")
    if "@" in parts.netloc or "%" in parts.netloc:
        raise WebhookUrlError(
            f"must name a host and no credentials or percent-escapes; got {url!r:.200}"
        )
    if port == 0:
        raise WebhookUrlError(f"port 0 is not a port; got {url!r:.200}")
    host = _checked_host(parts.hostname or "", parts.netloc.startswith("["), url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(parts.scheme, host, port or DEFAULT_PORTS[parts.scheme], target)


def _checked_host(host: str, bracketed: bool, url: str) -> str:
    host = host.rstrip(".")
    if not host:
        raise WebhookUrlError(f"must name a host and no credentials; got {url!r:.200}")
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise WebhookUrlError(f"{host!r:.100} is not an IPv6 address: {url!r:.200}") from None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise WebhookUrlError(
            f"host {host!r:.100} is not a DNS name (letters, digits and '-' between dots)"
        )
    try:
        socket.inet_aton(host)
    except OSError:
        return host
    # 127.1, 0x7f.0.0.1, 2130706433: names to a DNS check, loopback to the C library.
    raise WebhookUrlError(f"host {host!r:.100} is an IPv4 address not written as a.b.c.d")


def check_host_pattern(pattern: str) -> str:
    """An entry of an allowed-host list, normalised (lower case, no trailing dot or brackets):
    a host as ``parse_webhook_url`` reads one, or ``*.`` and a DNS name (its subdomains);
    ``WebhookUrlError`` otherwise."""
    text = pattern.strip().lower().rstrip(".")
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if _FORBIDDEN.search(name) or "*" in name or not name:
        raise WebhookUrlError(f"{pattern!r:.100} is not a host name, an address or *.name")
    bracketed = name.startswith("[") and name.endswith("]")
    host = _checked_host(name[1:-1] if bracketed else name, bracketed or ":" in name, pattern)
    if wildcard and _is_address(host):
        raise WebhookUrlError(f"{pattern!r:.100}: '*.' goes before a DNS name, not an address")
    return f"*.{host}" if wildcard else host


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def check_webhook_url(url: str, allowed_hosts: Sequence[str], policy: WebhookPolicy) -> str:
    """``url`` if a request may name it, else ``WebhookUrlError``."""
    if not allowed_hosts:
        raise WebhookUrlError(
            "this server accepts no per-request webhook URL (QVGEN_WEBHOOK_ALLOWED_HOSTS is "
            "empty); leave webhook_url out"
        )
    target = parse_webhook_url(url)
    if policy.https_only and target.scheme != "https":
        raise WebhookUrlError(f"scheme must be https; got {url!r:.200}")
    if not _host_allowed(target.host, allowed_hosts):
        raise WebhookUrlError(
            f"host {target.host!r:.100} is not allowed; allowed: {', '.join(allowed_hosts)}"
        )
    if not policy.port_allowed(target.port):
        raise WebhookUrlError(
            f"port {target.port} is not allowed (QVGEN_WEBHOOK_ALLOWED_PORTS); got {url!r:.200}"
        )
    literal = target.literal
    if literal is not None and not policy.allow_private:
        why = refused_address(literal)
        if why:
            raise WebhookUrlError(f"{literal} is {why}: not an address webhooks may go to")
    return url


def refused_address(address: IPAddress) -> str | None:
    """Why the deliverer must not connect to ``address`` (None: it is globally routable).

    IPv6 addresses that carry an IPv4 one (v4-mapped ``::ffff:a.b.c.d``, 6to4, Teredo's
    client, NAT64's well-known prefix) are judged by that IPv4 address too: a v6 socket reaches
    it."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo:
            embedded.append(address.teredo[1])
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        for inner in embedded:
            if inner is not None and (why := refused_address(inner)):
                return f"{why} (inside {address})"
    # Most specific first: Python counts link-local, reserved... as private too.
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "not globally routable"
    return None


def resolve(host: str, port: int) -> list[str]:
    """The system resolver's addresses of ``host``, each once, in its order."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network backend for one delivery attempt: resolves once through
    ``resolver``, connects only to an address ``policy`` allows, and gives every read and
    write of the attempt what is left of one deadline (``time.monotonic()`` seconds)."""

    def __init__(self, resolver: Resolver, policy: WebhookPolicy, deadline: float) -> None:
        self._resolver = resolver
        self._policy = policy
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if not self._policy.port_allowed(port):
            raise AddressRefused(f"port {port} is not allowed (QVGEN_WEBHOOK_ALLOWED_PORTS)")
        try:
            addresses = self.checked_addresses(host, port)
        except OSError as error:
            raise httpcore.ConnectError(f"{host} does not resolve: {error}") from error
        last: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address, port, timeout=_left(self._deadline, timeout), socket_options=None
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
                continue
            return DeadlineStream(stream, self._deadline)
        assert last is not None
        raise last

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` that pass the policy; ``AddressRefused`` if none does."""
        literal = host.strip("[]")
        try:
            found = [str(ipaddress.ip_address(literal))]
        except ValueError:
            found = list(self._resolver(host, port))
        if self._policy.allow_private:
            allowed = found
        else:
            allowed = [a for a in found if not refused_address(ipaddress.ip_address(a))]
        if not allowed:
            refused = ", ".join(f"{a} ({refused_address(ipaddress.ip_address(a))})" for a in found)
            raise AddressRefused(f"{host} resolves to no allowed address: {refused or 'none'}")
        return allowed

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes all end by one deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _left(self._deadline, timeout, httpcore.ConnectTimeout)
        )
        return DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _left(
    deadline: float,
    timeout: float | None,
    error: type[httpcore.TimeoutException] = httpcore.ConnectTimeout,
) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the attempt's deadline (QVGEN_WEBHOOK_TIMEOUT_S) passed")
    return left if timeout is None else min(timeout, left)
