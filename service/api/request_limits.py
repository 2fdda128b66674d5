"""Request limits as raw ASGI middleware: the body cap (413), before any route reads a byte, the
body deadline (408), and the caps on requests in flight: for the process (503) and per API key
(429). The probes /healthz and /readyz are outside the caps, so that one tenant's slow clients
never make a liveness probe fail. The request head's deadline and size cap sit below ASGI, in the
HTTP protocol (``service.api.http_guard``).

A declared ``Content-Length`` over the body cap is refused at once; a chunked body is counted as
it streams and cut off when it passes the cap, so memory stays bounded whatever the client sends.

A request past the in-flight cap is answered 503 with ``Retry-After`` once its body has been read
(and dropped): the connection then stays usable, where closing it with unread bytes would reset
it and could destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import KeyRing
from service.api.errors import APIError, ErrorType, error_response

OVERLOADED_RETRY_AFTER_S = 1
# Answered whatever the load: a probe that fails restarts (liveness) or unlists (readiness) an
# API that is only busy.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> APIError:
    return APIError(
        413, f"request body exceeds {limit} bytes", code="request_too_large", param=None
    )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await error_response(_too_large(self.max_bytes))(scope, receive, send)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await error_response(_too_large(self.max_bytes))(scope, receive, send)


class BodyTimeout(Exception):
    pass


class BodyDeadline:
    """The whole request body must arrive within ``timeout_s`` of the headers, however it
    trickles; past it the request is answered 408 with ``Connection: close``, whatever the route
    was about to answer (the route sees its read fail), and the connection closes. Reads after
    the body's end (a route waiting for the client to leave) have no deadline."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        body_done = False
        expired = False
        started = False

        async def deadline_receive() -> Message:
            nonlocal body_done, expired
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    message = await receive()
            except TimeoutError:
                expired = True
                raise BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if expired:
                return  # the 408 below answers instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, deadline_receive, guarded_send)
        except Exception:
            # Whatever the route made of its failed read (FastAPI turns it into a 400).
            if not expired:
                raise
        if expired and not started:
            timeout = APIError(
                408,
                f"request body not received within {self.timeout_s:g} s",
                code="request_timeout",
                param=None,
                headers={"Connection": "close"},
            )
            await error_response(timeout)(scope, receive, send)


def _loop_time(deadline: float) -> float:
    """``deadline`` on ``time.monotonic()``'s clock, on the event loop's."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


class ConcurrencyLimit:
    """At most ``max_requests`` HTTP requests in the wrapped app at once, and at most
    ``per_key`` of them from one API key when keys are on (every request without a valid key
    counts as one more key). One event loop: plain counters.

    A request past either cap has its body read (and dropped) before the answer, within the
    body deadline outside."""

    def __init__(self, app: ASGIApp, max_requests: int, per_key: int, keys: KeyRing) -> None:
        self.app = app
        self.max_requests = max_requests
        self.per_key = per_key
        self.keys = keys
        self.in_flight = 0
        self.by_key: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        tenant = self.keys.tenant(_authorization(scope)) if self.keys.enabled else ""
        refusal = None
        if self.in_flight >= self.max_requests:
            refusal = APIError(
                503,
                f"the API is serving {self.max_requests} requests; retry after "
                f"{OVERLOADED_RETRY_AFTER_S} s",
                type=ErrorType.SERVICE_UNAVAILABLE,
                code="overloaded",
                headers={"Retry-After": str(OVERLOADED_RETRY_AFTER_S)},
            )
        elif self.keys.enabled and self.by_key[tenant] >= self.per_key:
            refusal = APIError(
                429,
                f"this API key has {self.per_key} requests in flight (the limit, "
                f"max_concurrent_requests_per_key); retry after {OVERLOADED_RETRY_AFTER_S} s",
                type=ErrorType.RATE_LIMIT,
                code="key_requests_in_flight",
                headers={"Retry-After": str(OVERLOADED_RETRY_AFTER_S)},
            )
        if refusal is not None:
            await _drain(receive)
            await error_response(refusal)(scope, receive, send)
            return
        self.in_flight += 1
        self.by_key[tenant] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.by_key[tenant] -= 1
            if not self.by_key[tenant]:
                del self.by_key[tenant]


def _authorization(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return bytes(value)
    return b""


async def _drain(receive: Receive) -> None:
    """Reads the request body to its end and drops it (the body cap outside bounds it)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
