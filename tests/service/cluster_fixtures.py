"""The service as real processes for end-to-end tests: uvicorn API plus worker processes.

Built on ``benchmarks.service.Cluster`` (the benchmark runs the very same processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.service import Cluster
from service.settings import ServiceSettings
from tests.service.redis_fixtures import free_port, make_settings

API_KEY = "test-key-e2e"
MODEL = "tiny"


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


# Deadlines of the waits below: what a worker's start or a job takes on a loaded 2-core machine,
# with room to spare; a wait returns as soon as its condition holds.
READY_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 120.0


def wait_ready(cluster: Cluster, workers: int = 1, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until /readyz counts ``workers`` live workers for the model."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(f"{cluster.base_url}/readyz", timeout=10)
        if response.json()["workers"].get(MODEL, 0) >= workers:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {workers} workers became ready in {timeout_s} s")


def wait_video(
    cluster: Cluster,
    video_id: str,
    done: Callable[[dict[str, object]], bool],
    timeout_s: float = JOB_TIMEOUT_S,
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        video: dict[str, object] = httpx.get(
            f"{cluster.base_url}/v1/videos/{video_id}", headers=auth(), timeout=10
        ).json()
        if done(video) or time.monotonic() > deadline:
            return video
        time.sleep(0.05)


def is_final(video: dict[str, object]) -> bool:
    return video.get("status") in ("completed", "failed", "cancelled")


def result_files(settings: ServiceSettings, video_id: str) -> list[Path]:
    directory = settings.results_dir / video_id
    return sorted(p for p in directory.glob("*.mp4") if not p.name.startswith("."))


def start_cluster(
    redis_url: str, results: Path, **overrides: object
) -> tuple[Cluster, ServiceSettings]:
    # One key stands for every client of these tests (floods of 150 at once): its share of the
    # in-flight cap is the whole cap. Per-key limits: tests/service/api/test_slow_clients.py.
    overrides.setdefault(
        "max_concurrent_requests_per_key",
        overrides.get(
            "max_concurrent_requests",
            ServiceSettings.model_fields["max_concurrent_requests"].default,
        ),
    )
    # Likewise its jobs fill the queue up to its depth, not a per-key quota (tested in
    # tests/service/api/test_job_quota.py and tests/service/queue/test_quota.py).
    overrides.setdefault("max_jobs_per_key", 0)
    settings = make_settings(redis_url, results, api_keys=API_KEY, **overrides)
    cluster = Cluster(settings, free_port())
    cluster.start_api()
    return cluster, settings


@pytest.fixture
def cluster(redis_server: object, tmp_path: Path) -> Iterator[tuple[Cluster, ServiceSettings]]:
    made, settings = start_cluster(redis_server.url, tmp_path / "results")  # type: ignore[attr-defined]
    try:
        yield made, settings
    finally:
        made.stop()
