"""A real HTTP webhook receiver for the tests, and a verifier of Standard Webhooks signatures
written from the specification (standardwebhooks.com), not from the service's signing code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Generous for a loaded machine; every wait returns as soon as its condition holds.
WAIT_S = 60.0


class InvalidSignature(Exception):
    pass


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> None:
    """Raise ``InvalidSignature`` unless one ``v1`` signature in ``webhook-signature`` is the
    base64 HMAC-SHA256, keyed by the secret's base64 part, of "{id}.{timestamp}.{body}" and the
    timestamp lies within ``tolerance_s`` of now."""
    try:
        event_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"]
    except KeyError as missing:
        raise InvalidSignature(f"header {missing} missing") from None
    if abs(time.time() - int(timestamp)) > tolerance_s:
        raise InvalidSignature(f"timestamp {timestamp} outside the tolerance")
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return
    raise InvalidSignature(f"no valid v1 signature in {signatures!r}")


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """Answers each request with the next status of ``statuses`` (then 200) and records it."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    # Set: every request waits (at most WAIT_S) until it is set again before it is answered.
    hold: threading.Event | None = None
    in_flight: int = 0
    most_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def wait_for(self, count: int) -> list[Received]:
        deadline = time.monotonic() + WAIT_S
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests came"
            time.sleep(0.02)
        return list(self.requests)


@contextmanager
def running_receiver(
    statuses: list[int] | None = None, hold: threading.Event | None = None
) -> Iterator[Receiver]:
    """``hold``: answer nothing until it is set (bounded by WAIT_S)."""
    receiver = Receiver(statuses=list(statuses or []), hold=hold)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if receiver.hold is not None:
                with receiver._lock:
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                receiver.hold.wait(WAIT_S)
                with receiver._lock:
                    receiver.in_flight -= 1
            with receiver._lock:
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.requests.append(Received(headers, body, status))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
