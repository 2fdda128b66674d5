"""Where a job's result files live: one interface (``ResultStore``), one implementation per kind
of storage. The worker writes through it, the API serves and deletes through it, and the worker's
janitor sweeps through it; nothing else knows the layout."""

from __future__ import annotations

from service.settings import ServiceSettings
from service.storage.base import ResultStore, StoredResult
from service.storage.local import LocalResultStore

__all__ = ["LocalResultStore", "ResultStore", "StoredResult", "open_store"]


def open_store(settings: ServiceSettings) -> ResultStore:
    """The store the settings name (today: the local directory ``results_dir``)."""
    return LocalResultStore(settings.results_dir)
