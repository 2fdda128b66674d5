"""Request body cap (413) as raw ASGI middleware, before any route reads a byte.

A declared ``Content-Length`` over the cap is refused at once; a chunked body is counted as it
streams and cut off when it passes the cap, so memory stays bounded whatever the client sends.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import APIError, error_response


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
