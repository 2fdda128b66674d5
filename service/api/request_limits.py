"""Request limits as raw ASGI middleware: the body cap (413), before any route reads a byte, and
the cap on requests in flight (503).

A declared ``Content-Length`` over the body cap is refused at once; a chunked body is counted as
it streams and cut off when it passes the cap, so memory stays bounded whatever the client sends.

A request past the in-flight cap is answered 503 with ``Retry-After`` once its body has been read
(and dropped): the connection then stays usable, where closing it with unread bytes would reset
it and could destroy the answer before the client reads it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import APIError, ErrorType, error_response

OVERLOADED_RETRY_AFTER_S = 1


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


class ConcurrencyLimit:
    """At most ``max_requests`` HTTP requests in the wrapped app at once (one event loop: a plain
    counter)."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            await _drain(receive)
            overloaded = APIError(
                503,
                f"the API is serving {self.max_requests} requests; retry after "
                f"{OVERLOADED_RETRY_AFTER_S} s",
                type=ErrorType.SERVICE_UNAVAILABLE,
                code="overloaded",
                headers={"Retry-After": str(OVERLOADED_RETRY_AFTER_S)},
            )
            await error_response(overloaded)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _drain(receive: Receive) -> None:
    """Reads the request body to its end and drops it (the body cap outside bounds it)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
