"""Real ``redis-server`` processes for the service tests, and settings that point at them.

Each test session starts its own server on a free port (no persistence, ``noeviction``) rather
than sharing the machine's, and each test gets its own key prefix. Tests that need other flags
(AOF for the restart test) start a ``RedisServer`` of their own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.settings import ServiceSettings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process in ``directory`` on ``port``; restartable."""

    def __init__(self, directory: Path, *flags: str) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (run `make system-deps`)")
        self.directory = directory
        self.port = free_port()
        self.flags = flags
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            *self.flags,
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 60  # generous: a loaded machine starts processes slowly
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, what a crash does."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def freeze(self) -> None:
        """SIGSTOP: the server holds its connections and answers nothing (a hung host)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@contextlib.contextmanager
def running_redis(directory: Path, *flags: str) -> Iterator[RedisServer]:
    server = RedisServer(directory, *flags)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis"), "--appendonly", "no") as server:
        yield server


def make_settings(redis_url: str, results_dir: Path, **overrides: object) -> ServiceSettings:
    """Settings for one test: its own key prefix, second-scale timeouts."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "key_prefix": f"t{uuid.uuid4().hex[:12]}",
        "models": ("tiny",),
        "claim_timeout_s": 1.0,
        "heartbeat_interval_s": 0.2,
        "poll_after_ms": 50,
        "results_dir": results_dir,
        "worker_metrics_port": 0,
        "webhook_metrics_port": 0,
        "janitor_interval_s": 1.0,
    }
    values.update(overrides)
    return ServiceSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path) -> ServiceSettings:
    return make_settings(redis_server.url, tmp_path / "results")


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()
