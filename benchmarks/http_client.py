"""A lean HTTP/1.1 client for the load phases of ``qvgen bench service``: keep-alive connections
from a bounded pool, requests as ready-made bytes, answers read by ``Content-Length``.

Why not httpx: the load client shares the machine with the API it measures, and httpx spends
about 1 ms of CPU a request, as much as the API it loads; on a 2-core machine with other work
on it the client then fell behind its own schedule and reported its lag as the server's. This
one spends a fraction of that. It speaks only what the API answers (a ``Content-Length`` body,
no chunked encoding, no redirects) and fails loudly on anything else.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

_MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """The connection failed or the answer was not one this client reads."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> tuple[Answer, bool]:
        """Sends ``request``, reads its answer; also says whether the server keeps the
        connection open."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            raise HttpError("answer head too long")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise HttpError(f"transfer-encoding {value.strip()!r} is not read by this client")
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        body = await self.reader.readexactly(length) if length else b""
        return Answer(status, body), keep

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    """Up to ``max_connections`` keep-alive connections to ``host:port``, all sending
    ``headers`` (e.g. the API key)."""

    def __init__(self, host: str, port: int, max_connections: int, headers: dict[str, str]) -> None:
        self.host = host
        self.port = port
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers}.items())
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    def encode(self, method: str, path: str, body: Any = None) -> bytes:
        """The request as bytes, made once and sent as often as wanted (``body``: as JSON)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        return head.encode() + payload

    async def send(self, request: bytes) -> Answer:
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            if connection is None:
                try:
                    connection = _Connection(*await asyncio.open_connection(self.host, self.port))
                except OSError as error:
                    raise HttpError(f"connect: {error}") from error
            try:
                answer, keep = await connection.exchange(request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
                connection.close()
                raise HttpError(f"{type(error).__name__}: {error}") from error
            except BaseException:
                connection.close()
                raise
            if keep:
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
