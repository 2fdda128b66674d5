"""The compose stack's own commands as processes on this machine: Redis with the compose
configuration, the API, the CPU worker and Prometheus with the project's scrape configuration.

Only hosts, ports and paths are rewritten (container names → 127.0.0.1, fixed ports → free
ones, container paths → temporary directories, the embedded model → the tiny Wan pipeline); the
commands, flags, environment, health checks and scrape jobs are the compose file's. A job goes
through, then Prometheus must report both scrape targets up and a sample in the job-duration
histograms, and every query of the Grafana dashboard must evaluate.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.deploy.compose import (
    HEALTHCHECK_COMMAND,
    HEALTHCHECK_SCRIPT,
    PROMETHEUS_CONFIG,
    Processes,
    flag_value,
    healthcheck_url,
    host_path,
    load_yaml,
    mounts,
    processes,
    replace_flag,
    require_program,
    resolved_compose,
    wait_until,
)
from tests.service.redis_fixtures import free_port

# Small enough for the tiny pipeline to finish in a second or two on a busy CPU.
REQUEST = {"prompt": "a red circle moving left", "size": "32x32", "num_frames": 5}
REQUEST_STEPS = 2
# Prometheus scrapes every 15 s (the project's interval) from a per-target offset.
SCRAPE_WAIT_S = 90.0


def redis_command(service: dict[str, Any], port: int, data: Path) -> list[str]:
    command = [
        str(host_path(service, arg)) if arg.startswith("/") else arg for arg in service["command"]
    ]
    assert any(m.target == "/data" for m in mounts(service)), "Redis keeps its AOF in /data"
    return [*command, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]


def stack_environment(
    service: dict[str, Any], redis_port: int, results: Path, metrics_port: int
) -> dict[str, str]:
    """The service's compose environment with hosts, ports and paths rewritten."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QVGEN_")}
    compose_env = {
        key: str(value) for key, value in service["environment"].items() if value is not None
    }
    assert compose_env["QVGEN_REDIS_URL"] == "redis://redis:6379/0"
    compose_env["QVGEN_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    compose_env["QVGEN_RESULTS_DIR"] = str(results)
    compose_env["QVGEN_WORKER_METRICS_PORT"] = str(metrics_port)
    return {**env, **compose_env}


def python_command(command: list[str]) -> list[str]:
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def healthcheck(service: dict[str, Any], port: int) -> list[str]:
    """The service's compose health check, pointed at ``port``."""
    url = healthcheck_url(service)
    local = url.replace(url.split("/")[2], f"127.0.0.1:{port}")
    return [sys.executable, str(HEALTHCHECK_SCRIPT), local]


def passes(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def prometheus_config(api_port: int, worker_port: int, path: Path) -> Path:
    """The project's scrape configuration with the compose hosts replaced by 127.0.0.1 ports."""
    config = copy.deepcopy(load_yaml(PROMETHEUS_CONFIG))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["qvgen-api"]["static_configs"] == [{"targets": ["api:8000"]}]
    jobs["qvgen-api"]["static_configs"] = [{"targets": [f"127.0.0.1:{api_port}"]}]
    # The compose DNS name "worker" becomes the one worker's address.
    (discovery,) = jobs["qvgen-worker"].pop("dns_sd_configs")
    assert discovery["names"] == ["worker"] and discovery["port"] == 9101
    jobs["qvgen-worker"]["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def prometheus_command(service: dict[str, Any], config: Path, data: Path, port: int) -> list[str]:
    rewritten = {
        "--config.file": str(config),
        "--storage.tsdb.path": str(data),
    }
    command = [require_program("prometheus")]
    for arg in service["command"]:
        flag, _, value = arg.partition("=")
        command.append(f"{flag}={rewritten.get(flag, value)}")
    return [*command, f"--web.listen-address=127.0.0.1:{port}"]


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def start_app(
    running: Processes, compose: dict[str, Any], tiny_wan_dir: Path, tmp_path: Path
) -> tuple[str, int]:
    """Redis, the API and the CPU worker as compose runs them; returns the API's URL and the
    worker's metrics port once both health checks pass."""
    services = compose["services"]
    redis_port, api_port, metrics_port = free_port(), free_port(), free_port()
    (tmp_path / "redis").mkdir()
    running.start(
        "redis", redis_command(services["redis"], redis_port, tmp_path / "redis"), dict(os.environ)
    )
    client = redis.Redis(port=redis_port, decode_responses=True)
    wait_until(lambda: client.ping(), 60, "redis-server")
    config = {
        key: client.config_get(key)[key]
        for key in ("appendonly", "appendfsync", "maxmemory-policy")
    }
    assert config == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
    }
    client.close()

    results = tmp_path / "results"
    api = services["api"]
    api_command = replace_flag(
        replace_flag(api["command"], "--host", "127.0.0.1"), "--port", str(api_port)
    )
    running.start(
        "api",
        python_command(api_command),
        stack_environment(api, redis_port, results, metrics_port),
    )
    worker = services["worker-cpu"]
    assert flag_value(worker["command"], "--device") == "cpu"
    worker_command = replace_flag(worker["command"], "--model", str(tiny_wan_dir))
    running.start(
        "worker",
        python_command(worker_command),
        stack_environment(worker, redis_port, results, metrics_port),
    )

    for name, service, port in (("api", api, api_port), ("worker", worker, metrics_port)):
        assert service["healthcheck"]["test"][1] == HEALTHCHECK_COMMAND
        try:
            wait_until(
                lambda s=service, p=port: passes(healthcheck(s, p)), 90, f"{name} health check", 0.5
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{running.log(name)}") from error
    return f"http://127.0.0.1:{api_port}", metrics_port


def run_one_job(base_url: str) -> None:
    created = httpx.post(
        f"{base_url}/v1/videos", json={**REQUEST, "num_inference_steps": REQUEST_STEPS}, timeout=10
    )
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]

    def finished() -> dict[str, Any] | None:
        video: dict[str, Any] = httpx.get(f"{base_url}/v1/videos/{video_id}", timeout=5).json()
        return video if video["status"] in ("completed", "failed") else None

    video = wait_until(finished, 120, f"job {video_id}")
    assert video["status"] == "completed", video


def test_compose_commands_serve_a_job_that_prometheus_sees(
    tiny_wan_dir: Path, tmp_path: Path
) -> None:
    compose = resolved_compose()
    with processes(tmp_path / "logs") as running:
        base_url, metrics_port = start_app(running, compose, tiny_wan_dir, tmp_path)
        run_one_job(base_url)

        api_port = int(base_url.rsplit(":", 1)[1])
        config = prometheus_config(api_port, metrics_port, tmp_path / "prometheus.yml")
        prom_port = free_port()
        (tmp_path / "tsdb").mkdir()
        command = prometheus_command(
            compose["services"]["prometheus"], config, tmp_path / "tsdb", prom_port
        )
        running.start("prometheus", command, dict(os.environ))
        prometheus = f"http://127.0.0.1:{prom_port}"
        # Until its storage is open Prometheus answers 503 in plain text.
        wait_until(lambda: httpx.get(f"{prometheus}/-/ready").status_code == 200, 60, "Prometheus")

        def scraped() -> bool:
            up = {series["metric"]["job"]: series["value"][1] for series in query(prometheus, "up")}
            histogram = query(
                prometheus, 'sum(qvgen_job_end_to_end_seconds_count{model="qvgen-tiny"})'
            )
            return (
                up == {"qvgen-api": "1", "qvgen-worker": "1"}
                and bool(histogram)
                and float(histogram[0]["value"][1]) >= 1
            )

        try:
            wait_until(scraped, SCRAPE_WAIT_S, "both targets up and a job-duration sample", 1.0)
        except AssertionError as error:
            targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).text
            raise AssertionError(
                f"{error}\ntargets: {targets}\n{running.log('prometheus')}"
            ) from error
        run_seconds = query(prometheus, 'qvgen_job_run_seconds_bucket{le="+Inf"}')
        assert [float(series["value"][1]) for series in run_seconds] == [1.0]

        dashboard = load_yaml(
            host_path(compose["services"]["grafana"], "/etc/grafana/dashboards") / "qvgen.json"
        )
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                query(prometheus, target["expr"].replace("$__rate_interval", "1m"))
