"""The worker exports how its engine's transformer runs, read live at scrape time."""

from __future__ import annotations

from service.engine.types import CompileStatus
from service.settings import ServiceSettings
from service.worker.noop_engine import NoopEngine
from service.worker.runner import Worker


def _exported(worker: Worker) -> dict[str, float | None]:
    return {
        status.value: worker.metrics.registry.get_sample_value(
            "qvgen_worker_transformer_compile", {"model": worker.model, "status": status.value}
        )
        for status in CompileStatus
    }


def test_compile_status_gauge_follows_the_engine(settings: ServiceSettings) -> None:
    engine = NoopEngine("tiny")
    worker = Worker(engine, settings, "cpu", metrics_port=0)
    try:
        assert _exported(worker) == {"eager": 1.0, "compiled": 0.0, "fallback": 0.0}
        # A compiled engine that later falls back (the diffusers engine's attribute changes).
        engine.compile_status = CompileStatus.FALLBACK  # type: ignore[misc]
        assert _exported(worker) == {"eager": 0.0, "compiled": 0.0, "fallback": 1.0}
    finally:
        worker._metrics_server.shutdown()
        worker.redis.close()
