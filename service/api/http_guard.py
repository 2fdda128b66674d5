"""uvicorn's httptools protocol with what it lacks against slow or oversized request heads: a
deadline for the request line and headers, and a cap on their size.

uvicorn has no header timeout (a connection that sends half a request line, or nothing, stays
open until the client leaves) and, with httptools, no header size limit (32 MB of headers are
parsed into memory and answered 200). h11 has a size limit (``h11_max_incomplete_event_size``)
but no deadline either, and parses several times slower; so the API keeps httptools and guards it
here, at the protocol, where the bytes arrive: an ASGI middleware only runs once the headers are
complete.

- The head deadline runs from the connection's first byte of a request (or from the connection's
  opening, for its first request) until the parser reports the headers complete. Past it the
  connection gets ``408`` and is closed. Idle keep-alive connections are uvicorn's
  ``timeout_keep_alive``.
- The size cap counts the bytes fed to the parser while the head is incomplete, and checks each
  read before the parser sees it (up to the blank line that ends the head, when the read holds
  it); past it the connection gets ``431`` and is closed: memory stays bounded by the cap plus
  one read.

The limits are class attributes, set once per process by ``configure`` (``qvgen serve api`` and
each process uvicorn forks read the same settings).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import ServiceSettings

# uvicorn's ``http`` option takes an import string: each of its worker processes imports it.
PROTOCOL = "service.api.http_guard:GuardedHttpToolsProtocol"


def _close_with(transport: asyncio.Transport, status: bytes, message: bytes) -> None:
    if transport.is_closing():
        return
    transport.write(
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: "
        + str(len(message)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + message
    )
    transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes: int = 0
    _in_head: bool = True
    _began_in_this_read: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head_before = self._in_head
        if in_head_before and self.parser is not None:
            # Before parsing: a read that brings a whole oversized head at once (headers
            # complete within it) is refused here, not after the parser has run the request.
            end = data.find(b"\r\n\r\n")
            head = len(data) if end < 0 else end + 4
            if self._head_bytes + head > self.max_header_bytes:
                self._refuse_head()
                return
        self._began_in_this_read = False
        super().data_received(data)
        # Headers still incomplete after this read: all of it was head, unless it also ended
        # the request before (pipelining); that read goes uncounted, which lets a pipelined
        # head pass the cap by at most one read.
        counted = in_head_before or not self._began_in_this_read
        if self._in_head and counted and self.parser is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_head()

    def _refuse_head(self) -> None:
        self._stop_head()
        _close_with(
            self.transport,
            b"431 Request Header Fields Too Large",
            f"request line and headers exceed {self.max_header_bytes} bytes".encode(),
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began_in_this_read = True
        if not self._in_head:
            self._start_head()

    def on_headers_complete(self) -> None:
        self._stop_head()
        super().on_headers_complete()

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _stop_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._in_head = False
            _close_with(
                self.transport,
                b"408 Request Timeout",
                f"request headers not received within {self.header_timeout_s:g} s".encode(),
            )


def configure(settings: ServiceSettings) -> None:
    GuardedHttpToolsProtocol.header_timeout_s = settings.http_header_timeout_s
    GuardedHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
