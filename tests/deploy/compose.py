"""The deployment as the tests see it: the compose file resolved by ``docker-compose config``, the
paths its bind mounts map, the command line parser its commands must satisfy, and child processes.

``docker-compose config`` (Debian's ``docker-compose`` package; no Docker engine needed) validates
the file against the compose schema and resolves anchors and ``${VAR:-default}`` exactly as
``docker compose up`` would; it runs with an environment free of our variables, so that what the
tests see are the defaults a fresh deployment gets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from service.cli import register

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"
# What the images install the health check script as (docker/*.Dockerfile).
HEALTHCHECK_COMMAND = "qvgen-healthcheck"
WORKER_SERVICES = ("worker-0", "worker-cpu")
APP_SERVICES = ("api", *WORKER_SERVICES)


def require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (run `make system-deps`)")
    return path


def compose_config(*flags: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose [flags] config`` in the repository, with none of our variables set."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [require_program("docker-compose"), "--project-directory", str(REPO), *flags, "config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved_compose() -> dict[str, Any]:
    result = compose_config()
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def raw_compose_text() -> str:
    return COMPOSE_FILE.read_text()


def service_cli_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m service.cli`` (``service.cli.main`` builds the same one)."""
    parser = argparse.ArgumentParser(prog="python -m service.cli", exit_on_error=False)
    parser.add_argument("--log-level", default="INFO")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def parse_service_command(command: list[str]) -> argparse.Namespace:
    """Parses a compose ``command`` of the form ``python -m service.cli …``."""
    assert command[:3] == ["python", "-m", "service.cli"], f"not a service command: {command}"
    try:
        return service_cli_parser().parse_args(command[3:])
    except (argparse.ArgumentError, SystemExit) as error:
        raise AssertionError(f"the CLI refuses {command[3:]}: {error}") from error


def flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def replace_flag(command: list[str], flag: str, value: str) -> list[str]:
    index = command.index(flag)
    return [*command[: index + 1], value, *command[index + 2 :]]


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or an absolute host path for a bind mount
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")


def mounts(service: dict[str, Any]) -> list[Mount]:
    """The service's volumes in ``docker-compose config``'s ``source:target[:mode]`` form."""
    found = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        found.append(Mount(source, target, read_only=mode == ["ro"]))
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a bind-mounted container path lies in the repository."""
    for mount in mounts(service):
        if mount.is_bind and (
            container_path == mount.target or container_path.startswith(mount.target + "/")
        ):
            return Path(mount.source + container_path[len(mount.target) :])
    raise AssertionError(f"{container_path} is not bind-mounted: {service.get('volumes')}")


def url_port(url: str) -> int:
    match = re.match(r"^https?://[^/:]+:(\d+)(/|$)", url)
    assert match, f"no port in {url!r}"
    return int(match.group(1))


def healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[:2] == ["CMD", HEALTHCHECK_COMMAND], f"not our health check: {test}"
    return str(test[2])


def duration_seconds(value: str) -> float:
    """Compose durations such as ``90s``, ``5m``, ``1m30s``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def load_yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


class Processes:
    """Child processes of a test, each in its own session; all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop_all(self) -> None:
        """One at a time, last started first: Redis outlives the worker's hand-back."""
        for process in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@contextlib.contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    running = Processes(logs)
    try:
        yield running
    except BaseException as error:
        for process in running.started:
            error.add_note(f"--- exit {process.poll()}: {process.args}")
        for path in sorted(logs.glob("*.log")):
            error.add_note(f"--- {path.name}:\n{path.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        running.stop_all()


# What a server that is still starting answers.
NOT_YET = (httpx.HTTPError, redis.exceptions.ConnectionError, ConnectionError)


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Calls ``check()`` until it returns something truthy; fails with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(*NOT_YET):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
