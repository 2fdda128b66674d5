"""Slow and oversized requests from one tenant, against a real ``qvgen serve api`` on loopback:
the probes and the other keys stay served, and every slow connection is answered and closed
within its deadline.

Bounded: a few dozen sockets, every wait a few seconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.service import Cluster
from tests.service.redis_fixtures import free_port, make_settings

KEY_A = "tenant-a-key"
KEY_B = "tenant-b-key"
IN_FLIGHT = 24
PER_KEY = 6
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
MAX_HEADER_BYTES = 16 * 1024
# Time a deadline may take to show on a loaded 2-core machine.
SLACK_S = 4.0


@pytest.fixture(scope="module")
def api(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = make_settings(
        redis_server.url,  # type: ignore[attr-defined]
        tmp_path_factory.mktemp("slow") / "results",
        api_keys=f"{KEY_A},{KEY_B}",
        max_concurrent_requests=IN_FLIGHT,
        max_concurrent_requests_per_key=PER_KEY,
        http_header_timeout_s=HEADER_TIMEOUT_S,
        http_body_timeout_s=BODY_TIMEOUT_S,
        max_header_bytes=MAX_HEADER_BYTES,
    )
    cluster = Cluster(settings, free_port())
    cluster.start_api()
    try:
        yield cluster
    finally:
        cluster.stop()


def _open(cluster: Cluster, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", cluster.port), timeout=5)
    sock.sendall(head)
    return sock


def _answer_and_close(sock: socket.socket, deadline: float) -> bytes:
    """What the server sent until it closed the connection; fails past ``deadline``."""
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"connection still open; got {received[:80]!r}") from None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def _slow_body(key: str) -> bytes:
    """A submission declaring 1000 bytes of body, of which it sends 10."""
    return (
        b"POST /v1/videos HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + key.encode() + b"\r\ncontent-length: 1000\r\n\r\n"
        b'{"prompt":'
    )


def test_one_keys_slow_bodies_leave_probes_and_other_keys_served(api: Cluster) -> None:
    slow = [_open(api, _slow_body(KEY_A)) for _ in range(IN_FLIGHT)]
    opened = time.monotonic()
    try:
        time.sleep(0.3)  # every slow request is in the app, waiting for its body
        assert httpx.get(f"{api.base_url}/healthz", timeout=2).status_code == 200
        ready = httpx.get(f"{api.base_url}/readyz", timeout=2)
        assert "workers" in ready.json(), ready.text  # answered, not "overloaded"
        other = httpx.get(
            f"{api.base_url}/v1/models", headers={"Authorization": f"Bearer {KEY_B}"}, timeout=2
        )
        assert other.status_code == 200, other.text
        # The slow key itself is refused past its share, not queued behind its own requests.
        same = httpx.get(
            f"{api.base_url}/v1/models", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=2
        )
        assert same.status_code == 429, same.text
        assert same.json()["error"]["code"] == "key_requests_in_flight"
        assert same.headers["retry-after"] == "1"
        deadline = opened + BODY_TIMEOUT_S + SLACK_S
        answers = [_answer_and_close(sock, deadline) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}


def test_an_unfinished_head_is_answered_408_and_closed(api: Cluster) -> None:
    partial = [_open(api, b"POST /v1/videos HTTP/1.1\r\nhost: api\r\nx-slow: a") for _ in range(10)]
    silent = [_open(api, b"") for _ in range(10)]
    deadline = time.monotonic() + HEADER_TIMEOUT_S + SLACK_S
    try:
        answers = [_answer_and_close(sock, deadline) for sock in partial + silent]
    finally:
        for sock in partial + silent:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    assert httpx.get(f"{api.base_url}/healthz", timeout=2).status_code == 200


@pytest.mark.parametrize("header_bytes", [MAX_HEADER_BYTES + 1, 1 << 20, 8 << 20])
def test_a_head_over_the_cap_is_answered_431_and_closed(api: Cluster, header_bytes: int) -> None:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=5)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: api\r\nx-big: ")
        try:  # the server may close before all of it is sent
            for _ in range(header_bytes // 65536 + 1):
                sock.sendall(b"a" * 65536)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer_and_close(sock, time.monotonic() + SLACK_S)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


def test_heads_and_bodies_within_the_limits_are_served(api: Cluster) -> None:
    headers = {"Authorization": f"Bearer {KEY_B}", "x-pad": "p" * (MAX_HEADER_BYTES // 2)}
    with httpx.Client(base_url=api.base_url, headers=headers, timeout=5) as client:
        for _ in range(3):  # kept-alive: each request's head gets its own deadline
            assert client.get("/v1/models").status_code == 200
            time.sleep(HEADER_TIMEOUT_S * 0.7)
        body = client.post("/v1/videos", json={"model": "nope", "prompt": "x" * 50_000})
        assert body.status_code == 400, body.text  # read whole, refused for its model
