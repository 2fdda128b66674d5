"""Fixtures of the deployment tests."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from service.metrics import ApiMetrics, WorkerMetrics

# The series names prometheus_client exports for a metric family of each type.
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("", "_bucket", "_count", "_sum")}


def _series_names(registry: CollectorRegistry) -> set[str]:
    return {
        family.name + suffix for family in registry.collect() for suffix in _SUFFIXES[family.type]
    }


@pytest.fixture(scope="session")
def exported_metric_names() -> set[str]:
    """Every series name the API and the workers export (``service/metrics.py``)."""
    return _series_names(ApiMetrics().registry) | _series_names(WorkerMetrics().registry)
