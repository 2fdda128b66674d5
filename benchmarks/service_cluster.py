"""The service as child processes: ``qvgen serve api`` under uvicorn, noop workers, and a private
``redis-server`` with the shipped configuration. ``qvgen bench service`` and the service's
end-to-end and chaos tests run these same processes.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import redis
from pydantic import SecretStr

from service.settings import ServiceSettings
from service.worker.engines import EngineKind

RUN_MODEL = "bench-noop"
# The Redis configuration the service ships (AOF everysec, noeviction).
SHIPPED_REDIS_CONF = Path(__file__).resolve().parent.parent / "service" / "queue" / "redis.conf"


def settings_environment(settings: ServiceSettings) -> dict[str, str]:
    """``QVGEN_*`` variables that make a child process read back exactly ``settings``."""
    env = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue  # unset: the default (None) again
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, tuple):
            text = ",".join(v.get_secret_value() if isinstance(v, SecretStr) else v for v in value)
        else:
            text = str(value.value if isinstance(value, enum.Enum) else value)
        env[f"QVGEN_{name.upper()}"] = text
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and of its live descendants (uvicorn's
    worker processes when the API runs several)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def private_redis(directory: Path, timeout_s: float = 60) -> Iterator[tuple[str, int]]:
    """A ``redis-server`` on a free loopback port with ``service/queue/redis.conf`` (AOF
    everysec, noeviction), its files in ``directory``; yields (url, pid) and kills it after."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (run `make system-deps`)")
    port = free_port()
    command = [
        "redis-server", str(SHIPPED_REDIS_CONF), "--port", str(port), "--bind", "127.0.0.1",
        "--dir", str(directory),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.02)
        yield url, server.pid
    finally:
        client.close()
        server.kill()
        server.wait(timeout=10)


class Cluster:
    """The API and workers as child processes, all under one settings environment."""

    def __init__(self, settings: ServiceSettings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.env = {**os.environ, **settings_environment(settings)}
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _qvgen(self, *args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "service.cli", "--log-level", "WARNING", *args]
        return subprocess.Popen(command, env=self.env)

    def start_api(self, timeout_s: float = 120) -> None:
        """Starts ``qvgen serve api`` and waits for /healthz (imports take seconds on a busy
        machine, so the deadline is generous)."""
        self.api = self._qvgen("serve", "api", "--port", str(self.port))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited with {self.api.returncode} before it was up")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the API did not come up within {timeout_s} s")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_worker(
        self,
        step_delay_s: float = 0.0,
        *,
        model: str = RUN_MODEL,
        engine: EngineKind = EngineKind.NOOP,
        model_id: str = RUN_MODEL,
    ) -> subprocess.Popen[bytes]:
        worker = self._qvgen(
            "serve", "worker", "--engine", str(engine), "--model", model,
            "--model-id", model_id, "--step-delay", str(step_delay_s),
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, *([self.api] if self.api else [])]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
