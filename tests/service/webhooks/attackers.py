"""Hostile webhook receivers on loopback, each bounded in time and bytes, and a way to put an
event straight into the outbox (as a job's end would)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from service.queue.keys import Keys
from service.queue.records import now_ms


def put_event(client: redis.Redis, prefix: str, url: str, owner: str | None = None) -> str:
    """Write a due ``video.completed`` event for ``url``, as ``emit_webhook`` does."""
    keys = Keys(prefix)
    hex_id = uuid.uuid4().hex
    event_id = f"evt_{hex_id}"
    fields: dict[str, str | int] = {
        "id": event_id,
        "type": "video.completed",
        "video_id": f"video_{hex_id}",
        "url": url,
        "created_at": int(time.time()),
        "attempts": 0,
    }
    if owner is not None:
        fields["owner"] = owner
    client.hset(keys.webhook(event_id), mapping=fields)
    client.zadd(keys.webhooks_due, {event_id: now_ms()})
    client.lpush(keys.webhooks_wake, "1")
    return event_id


@dataclass
class RawReceiver:
    """A TCP server answering every request with ``answer`` (what it does is the attack)."""

    port: int = 0
    accepted: list[float] = field(default_factory=list)  # monotonic times
    closed_by_peer: list[float] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hooks"


Answer = Callable[[socket.socket, RawReceiver], None]


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


@contextmanager
def dribbling_receiver(interval_s: float, for_s: float) -> Iterator[RawReceiver]:
    """Answers a status line one byte every ``interval_s``, for at most ``for_s``, then closes."""
    line = b"HTTP/1.1 200 OK\r\n" * 100

    def answer(conn: socket.socket, receiver: RawReceiver) -> None:
        end = time.monotonic() + for_s
        sent = 0
        while time.monotonic() < end and sent < len(line):
            conn.sendall(line[sent : sent + 1])
            sent += 1
            time.sleep(interval_s)
        receiver.bytes_sent.append(sent)

    with _raw_receiver(answer) as receiver:
        yield receiver


@contextmanager
def flooding_receiver(total_bytes: int) -> Iterator[RawReceiver]:
    """Answers 200 with a body of ``total_bytes`` zeros, sent as fast as the peer reads."""

    def answer(conn: socket.socket, receiver: RawReceiver) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-length: {total_bytes}\r\n\r\n".encode())
        chunk = bytes(1 << 16)
        sent = 0
        try:
            while sent < total_bytes:
                conn.sendall(chunk)
                sent += len(chunk)
        finally:
            receiver.bytes_sent.append(sent)

    with _raw_receiver(answer) as receiver:
        yield receiver


@contextmanager
def _raw_receiver(answer: Answer) -> Iterator[RawReceiver]:
    receiver = RawReceiver()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    receiver.port = server.getsockname()[1]
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                _read_request(conn)
                answer(conn, receiver)
            except OSError:
                receiver.closed_by_peer.append(time.monotonic())

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            receiver.accepted.append(time.monotonic())
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
