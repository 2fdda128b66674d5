"""deploy/k8s: every manifest valid against the Kubernetes schemas (strict: an unknown field is
an error), the KEDA ScaledObject against the fields of its CRD it uses, and the numbers that
must agree with the code (stream and group names, settings names, ports, grace periods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.queue.keys import GROUP, Keys
from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"

# The part of KEDA's ScaledObject CRD (keda.sh/v1alpha1) these manifests use; anything else in
# spec is refused, so a typo cannot pass as an unknown optional field.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "redis-streams"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["address", "stream", "consumerGroup"],
                                "properties": {
                                    "address": {"type": "string", "pattern": r"^[\w.-]+:\d+$"},
                                    "stream": {"type": "string"},
                                    "consumerGroup": {"type": "string"},
                                    "streamLength": {"type": "string", "pattern": r"^\d+$"},
                                    "pendingEntriesCount": {"type": "string"},
                                    "lagCount": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _documents() -> list[dict[str, Any]]:
    docs = []
    for name in _kustomization()["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(kind: str, name: str) -> dict[str, Any]:
    spec = _one(kind, name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container


def test_every_file_the_kustomization_names_exists_and_every_manifest_is_listed() -> None:
    kustomization = _kustomization()
    listed = set(kustomization["resources"])
    generated = {
        entry.split("=", 1)[-1]
        for generator in kustomization["configMapGenerator"]
        for entry in generator["files"]
    }
    for name in listed | generated:
        assert (K8S / name).is_file(), f"kustomization.yaml names {name}, which is missing"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, f"manifests not in kustomization.yaml: {sorted(on_disk - listed)}"


@pytest.mark.parametrize("index", range(len(_documents())))
def test_manifest_is_valid_kubernetes(index: int) -> None:
    doc = _documents()[index]
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validators_refuse_a_misspelt_field() -> None:
    deployment = _one("Deployment", "worker")
    broken = {**deployment, "spec": {**deployment["spec"], "replcas": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    scaled = _one("ScaledObject", "worker")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}, SCALED_OBJECT_SCHEMA
        )


def test_workers_scale_on_the_stream_and_group_the_queue_uses() -> None:
    settings = ServiceSettings(_env_file=None)
    worker_args = _container("Deployment", "worker")["args"]
    model = worker_args[worker_args.index("--model-id") + 1]
    (trigger,) = _one("ScaledObject", "worker")["spec"]["triggers"]
    assert trigger["metadata"]["stream"] == Keys(settings.key_prefix).stream(model)
    assert trigger["metadata"]["consumerGroup"] == GROUP
    config = _one("ConfigMap", "qvgen-settings")["data"]
    assert model in config["QVGEN_MODELS"].split(",")
    host = trigger["metadata"]["address"].split(".")[0]
    assert config["QVGEN_REDIS_URL"].startswith(f"redis://{host}:")


def test_settings_are_real_setting_names() -> None:
    fields = {f"QVGEN_{name.upper()}" for name in ServiceSettings.model_fields}
    config = _one("ConfigMap", "qvgen-settings")["data"]
    secrets = {**_one("Secret", "qvgen-api-keys")["stringData"]}
    secrets |= _one("Secret", "qvgen-s3-credentials")["stringData"]
    unknown = sorted(set(config) - fields) + sorted(set(secrets) - fields)
    assert not unknown, f"not ServiceSettings fields: {unknown}"


def test_results_go_to_the_object_store_and_no_pod_mounts_a_results_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _one("ConfigMap", "qvgen-settings")["data"]
    secrets = {**_one("Secret", "qvgen-api-keys")["stringData"]}
    secrets |= _one("Secret", "qvgen-s3-credentials")["stringData"]
    for name, value in {**config, **secrets}.items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings(_env_file=None)
    assert settings.result_store.value == "s3" and settings.s3_bucket
    for name in ("api", "worker"):
        env_from = {
            ref["secretRef"]["name"]
            for ref in _container("Deployment", name)["envFrom"]
            if "secretRef" in ref
        }
        assert "qvgen-s3-credentials" in env_from, f"{name} lacks the bucket's credentials"
        mounts = {m["mountPath"] for m in _container("Deployment", name).get("volumeMounts", [])}
        # The worker's only volume is its compile cache, no results directory.
        assert mounts <= {"/data/compile-cache"}, f"{name} mounts {mounts}"


def test_the_worker_keeps_its_compile_cache_across_container_restarts() -> None:
    """The worker image's QVGEN_COMPILE_CACHE_DIR is a volume of the pod, not the container's
    own file system, which a restart starts afresh."""
    image = (Path(__file__).resolve().parents[2] / "docker" / "worker.Dockerfile").read_text()
    assert "QVGEN_COMPILE_CACHE_DIR=/data/compile-cache" in image
    deployment = _one("Deployment", "worker")["spec"]["template"]["spec"]
    (mount,) = _container("Deployment", "worker")["volumeMounts"]
    assert mount["mountPath"] == "/data/compile-cache"
    (volume,) = [v for v in deployment["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


def test_one_gpu_per_worker_and_a_grace_period_longer_than_the_drain() -> None:
    container = _container("Deployment", "worker")
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    drain = int(_one("ConfigMap", "qvgen-settings")["data"]["QVGEN_DRAIN_TIMEOUT_S"])
    grace = _one("Deployment", "worker")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace > drain


def test_prometheus_annotations_name_ports_the_pods_open() -> None:
    for name in ("api", "worker", "webhooks"):
        template = _one("Deployment", name)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        ports = {p["containerPort"] for p in _container("Deployment", name)["ports"]}
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) in ports
    config = _one("ConfigMap", "qvgen-settings")["data"]
    assert int(config["QVGEN_WORKER_METRICS_PORT"]) == 9101
    assert int(config["QVGEN_WEBHOOK_METRICS_PORT"]) == 9190
    # Probes and scrapes come from outside the pod: a loopback-only listener fails them all.
    assert config["QVGEN_WORKER_METRICS_HOST"] == "0.0.0.0"


def test_every_process_reads_the_same_webhook_settings() -> None:
    """The settings refuse webhooks without a secret in every process, so the API, the workers
    and the deliverer all read the optional qvgen-webhooks Secret; the deliverer has no
    replicas until an operator configures webhooks and scales it."""
    for name in ("api", "worker", "webhooks"):
        refs = [
            r["secretRef"] for r in _container("Deployment", name)["envFrom"] if "secretRef" in r
        ]
        assert {"name": "qvgen-webhooks", "optional": True} in refs, name
    deliverer = _one("Deployment", "webhooks")
    assert deliverer["spec"]["replicas"] == 0
    assert _container("Deployment", "webhooks")["args"][-2:] == ["serve", "webhooks"]


def test_api_probes_use_liveness_and_readiness_routes() -> None:
    container = _container("Deployment", "api")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_redis_keeps_its_append_only_file_on_a_volume() -> None:
    shipped = (ROOT / "service" / "queue" / "redis.conf").read_text()
    assert (K8S / "redis.conf").read_text() == shipped, (
        "deploy/k8s/redis.conf differs from service/queue/redis.conf"
    )
    statefulset = _one("StatefulSet", "redis")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in _container("StatefulSet", "redis")["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    assert "appendonly yes" in shipped
