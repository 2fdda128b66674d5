"""docker-compose.yml against the code: it validates, and every service, command, port, volume
and environment variable it uses exists where it points (the CLI, the settings, the images, the
Prometheus and Grafana configuration, the README's tables)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from service.cli import run_api, run_worker
from service.settings import ServiceSettings
from service.worker.engines import EngineKind
from tests.deploy.compose import (
    APP_SERVICES,
    PROMETHEUS_CONFIG,
    REPO,
    WORKER_SERVICES,
    compose_config,
    duration_seconds,
    healthcheck_url,
    load_yaml,
    mounts,
    parse_service_command,
    raw_compose_text,
    resolved_compose,
    url_port,
)
from tests.deploy.readme_tables import section, variable_rows

SETTINGS_PREFIX = "QVGEN_"
# docker-compose.yml's own variables with a default: ${NAME:-default}.
INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def setting_env_names() -> set[str]:
    return {SETTINGS_PREFIX + name.upper() for name in ServiceSettings.model_fields}


def dockerfile(services: dict[str, dict[str, Any]], name: str) -> str:
    build = services[name]["build"]
    return (Path(build["context"]) / build["dockerfile"]).read_text()


def test_compose_file_validates_with_and_without_its_profiles() -> None:
    for flags in (
        (),
        ("--profile", "cpu"),
        ("--profile", "object-store"),
        ("--profile", "webhooks"),
    ):
        result = compose_config(*flags)
        assert result.returncode == 0, f"docker-compose {flags} config: {result.stderr}"


def test_services_are_the_documented_stack(services: dict[str, dict[str, Any]]) -> None:
    object_store = {"minio", "minio-bucket"}
    assert set(services) == {
        "redis",
        "api",
        "prometheus",
        "grafana",
        *WORKER_SERVICES,
        *object_store,
        "webhooks",
    }
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert all(services[name]["profiles"] == ["object-store"] for name in object_store)
    assert services["webhooks"]["profiles"] == ["webhooks"]
    profiled = {"worker-cpu", "webhooks", *object_store}
    assert all("profiles" not in services[name] for name in services if name not in profiled)


def _target_port(port: object) -> int:
    """A published port's container side: ``{"target": 9000, …}`` or ``"IP:9000:9000/tcp"``."""
    if isinstance(port, dict):
        return int(port["target"])
    return int(str(port).rsplit(":", 1)[1].split("/")[0])


def test_the_object_store_profile_is_the_store_the_settings_name(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    minio, bucket = services["minio"], services["minio-bucket"]
    monkeypatch.setenv("QVGEN_RESULT_STORE", "s3")  # what the profile is run with
    for name in APP_SERVICES:
        for key, value in services[name]["environment"].items():
            if value is not None:
                monkeypatch.setenv(key, str(value))
        settings = ServiceSettings()
        assert settings.s3_endpoint_url == f"http://minio:{url_port(settings.s3_endpoint_url)}"
        assert url_port(settings.s3_endpoint_url) == _target_port(minio["ports"][0])
        assert settings.s3_addressing_style.value == "path"  # "minio" is no DNS bucket domain
        assert minio["environment"] == {
            "MINIO_ROOT_USER": settings.s3_access_key_id.get_secret_value(),
            "MINIO_ROOT_PASSWORD": settings.s3_secret_access_key.get_secret_value(),
        }
        assert bucket["entrypoint"][-1] == f"qvgen/{settings.s3_bucket}"
    user, secret = (
        minio["environment"]["MINIO_ROOT_USER"],
        minio["environment"]["MINIO_ROOT_PASSWORD"],
    )
    assert bucket["environment"]["MC_HOST_qvgen"] == f"http://{user}:{secret}@minio:9000"
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]


def test_every_setting_is_passed_and_nothing_else(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        ours = {key for key in env if key.startswith(SETTINGS_PREFIX)}
        assert ours == setting_env_names(), (
            f"{name}: not settings {sorted(ours - setting_env_names())}, "
            f"missing {sorted(setting_env_names() - ours)}"
        )


def test_values_compose_sets_are_valid_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in APP_SERVICES:
        for key, value in services[name]["environment"].items():
            if value is not None:
                monkeypatch.setenv(key, str(value))
        settings = ServiceSettings()
        assert str(settings.results_dir) == "/data/results"
        assert settings.redis_url == "redis://redis:6379/0"


def test_api_command_port_and_checks(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    args = parse_service_command(api["command"])
    assert args.handler is run_api and args.host == "0.0.0.0"
    assert api["ports"] == [{"published": 8000, "target": args.port}]
    assert healthcheck_url(api) == f"http://127.0.0.1:{args.port}/readyz"
    image = dockerfile(services, "api")
    assert f"EXPOSE {args.port}" in image
    assert f'"http://127.0.0.1:{args.port}/healthz"' in image, "the image's check is liveness"
    assert api["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_worker_commands_serve_the_embedded_model(services: dict[str, dict[str, Any]]) -> None:
    image = dockerfile(services, "worker-0")
    copied = re.findall(r"^COPY (models/\S+) (\S+)$", image, re.M)
    assert len(copied) == 1, f"the worker image should embed one model: {copied}"
    source, target = copied[0]
    run_local = (REPO / "scripts" / "run-local.sh").read_text()
    assert f"MODEL_DIR=${{MODEL_DIR:-{source}}}" in run_local, "make run serves the same model"
    default_models = ServiceSettings.model_fields["models"].default
    for name, device in (("worker-0", "cuda"), ("worker-cpu", "cpu")):
        command = services[name]["command"]
        args = parse_service_command(command)
        assert args.handler is run_worker and args.engine is EngineKind.DIFFUSERS
        assert args.model == target and args.device == device
        assert args.model_id in default_models, f"{name} serves a model the API does not list"
        assert f'"--model-id", "{args.model_id}"' in image, "the image's CMD serves the same id"
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_webhook_deliverer_metrics_port_is_the_one_checked_and_scraped(
    services: dict[str, dict[str, Any]],
) -> None:
    deliverer = services["webhooks"]
    assert deliverer["environment"] == services["api"]["environment"]  # the same settings
    assert deliverer["image"] == services["api"]["image"]  # no model stack needed
    assert deliverer["command"][-2:] == ["serve", "webhooks"]
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    (discovery,) = jobs["qvgen-webhooks"]["dns_sd_configs"]
    port = int(deliverer["environment"]["QVGEN_WEBHOOK_METRICS_PORT"])
    assert url_port(healthcheck_url(deliverer)) == port == discovery["port"]
    assert discovery["names"] == deliverer["networks"]["default"]["aliases"] == ["webhooks"]


def test_one_gpu_per_worker(services: dict[str, dict[str, Any]]) -> None:
    devices = services["worker-0"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]


def test_worker_metrics_port_is_the_one_checked_and_scraped(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    discovery = jobs["qvgen-worker"]["dns_sd_configs"]
    assert len(discovery) == 1 and discovery[0]["type"] == "A"
    for name in WORKER_SERVICES:
        worker = services[name]
        port = int(worker["environment"]["QVGEN_WORKER_METRICS_PORT"])
        assert url_port(healthcheck_url(worker)) == port == discovery[0]["port"]
        aliases = worker["networks"]["default"]["aliases"]
        assert discovery[0]["names"] == aliases == ["worker"]
    assert "EXPOSE 9101" in dockerfile(services, "worker-0")
    api_port = parse_service_command(services["api"]["command"]).port
    assert jobs["qvgen-api"]["static_configs"] == [{"targets": [f"api:{api_port}"]}]


def test_volumes_exist_and_results_are_shared(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose["volumes"])
    for name, service in services.items():
        for mount in mounts(service):
            if mount.is_bind:
                assert Path(mount.source).exists(), f"{name} mounts missing {mount.source}"
                assert mount.read_only, f"{name} should mount {mount.source} read-only"
            else:
                assert mount.source in declared, f"{name} uses undeclared volume {mount.source}"
    for name in APP_SERVICES:
        results = services[name]["environment"]["QVGEN_RESULTS_DIR"]
        assert any(m.source == "results" and m.target == results for m in mounts(services[name]))
    assert any(m.source == "redis-data" and m.target == "/data" for m in mounts(services["redis"]))
    # Each worker keeps torch.compile's code on a volume, at the directory its image names.
    image = (REPO / "docker" / "worker.Dockerfile").read_text()
    assert "QVGEN_COMPILE_CACHE_DIR=/data/compile-cache" in image
    workers = [n for n in services if n.startswith("worker")]
    assert workers
    for name in workers:
        targets = {m.target: m.source for m in mounts(services[name])}
        assert targets.get("/data/compile-cache") == "compile-cache", f"{name}: {targets}"


def test_redis_runs_the_queue_configuration(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    config = next(m for m in mounts(redis) if m.target == command[1])
    assert Path(config.source) == REPO / "service" / "queue" / "redis.conf"
    lines = {line.strip() for line in Path(config.source).read_text().splitlines()}
    assert {"appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"} <= lines
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_service_has_a_health_check_and_workers_outlast_the_drain(
    services: dict[str, dict[str, Any]],
) -> None:
    # Every long-running service; minio-bucket is a one-shot that exits once the bucket exists.
    assert all("healthcheck" in s for s in services.values() if s.get("restart") != "no")
    assert services["minio-bucket"]["restart"] == "no"
    for name in WORKER_SERVICES:
        worker = services[name]
        drain = float(worker["environment"]["QVGEN_DRAIN_TIMEOUT_S"])
        grace = duration_seconds(worker["stop_grace_period"])
        # The drain, then the hand-back and the metrics server's shutdown.
        assert grace >= drain + 15, f"{name}: stop_grace_period {grace} s, drain {drain} s"


def test_images_are_multi_stage_non_root_with_health_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("api", "worker-0"):
        text = dockerfile(services, name)
        stages = re.findall(r"^FROM \S+(?: AS (\w+))?$", text, re.M)
        assert len(stages) >= 2, f"{name}: one stage"
        final = text[text.rindex("\nFROM ") :]
        assert re.search(r"^USER qvgen$", final, re.M), f"{name}: final stage runs as root"
        assert "HEALTHCHECK" in final and "--from=build" in final
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", "models/*", "!models/qvgen-tiny-w4a4"} <= set(ignored)


def test_grafana_dashboard_uses_the_provisioned_source_and_real_metrics(
    services: dict[str, dict[str, Any]], exported_metric_names: set[str]
) -> None:
    grafana = services["grafana"]
    provisioning = next(m for m in mounts(grafana) if m.target == "/etc/grafana/provisioning")
    root = Path(provisioning.source)
    (source,) = load_yaml(root / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    (provider,) = load_yaml(root / "dashboards" / "qvgen.yml")["providers"]
    dashboards = next(m for m in mounts(grafana) if m.target == provider["options"]["path"])
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards.target + "/")
    dashboard = load_yaml(Path(dashboards.source) / Path(home).name)  # JSON is YAML
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("request latency", "job latency", "queue depth", "jobs by status", "gpu memory"):
        assert topic in titles, f"the dashboard has no {topic} panel"
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            used = set(re.findall(r"\bqvgen_[a-z_]+", target["expr"]))
            assert used and used <= exported_metric_names, f"{panel['title']}: {used}"


def test_readme_lists_every_setting_with_its_default_and_compose_value(
    services: dict[str, dict[str, Any]],
) -> None:
    rows = variable_rows(section("Deployment"))
    api_env = services["api"]["environment"]
    for name in setting_env_names():
        assert name in rows, f"README's settings table lacks {name}"
        default, in_compose = rows[name][0], rows[name][1]
        field = name.removeprefix(SETTINGS_PREFIX).lower()
        parsed = getattr(ServiceSettings.model_validate({field: default}), field)
        assert parsed == ServiceSettings.model_fields[field].default, f"{name}: README {default!r}"
        expected = "passed through" if api_env[name] is None else str(api_env[name])
        assert in_compose == expected, f"{name}: README says {in_compose!r}, compose {expected!r}"


def test_readme_lists_every_compose_variable_with_its_default() -> None:
    rows = variable_rows(section("Deployment"))
    used = INTERPOLATION.findall(raw_compose_text())
    assert used
    for name, default in used:
        if name.startswith(SETTINGS_PREFIX):
            assert rows[name][1] == default, f"{name}: README's compose column differs"
        else:
            assert name in rows and rows[name][0] == default, f"README: {name} = {default!r}"


def test_readme_lists_every_run_local_variable() -> None:
    rows = variable_rows(section("Serving"))
    script = (REPO / "scripts" / "run-local.sh").read_text()
    defaults = re.findall(r"^([A-Z][A-Z_]*)=\$\{\1:-([^}$]*)\}$", script, re.M)
    assert {name for name, _ in defaults} >= {"MODEL_DIR", "MODEL_ID", "API_PORT"}
    for name, default in defaults:
        if name != "PY":
            assert name in rows and rows[name][0] == default, f"README: {name} = {default!r}"
    assert "DEVICE" in rows
