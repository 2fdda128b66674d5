"""Where a job's result files live: one interface (``ResultStore``), one implementation per kind
of storage. The worker writes through it, the API serves and deletes through it, and the worker's
janitor sweeps through it; nothing else knows the layout."""

from __future__ import annotations

from service.settings import ResultStoreKind, ServiceSettings
from service.storage.base import (
    ResultStore,
    StoredObject,
    StoredResult,
    StoreUnavailable,
    Variant,
)
from service.storage.local import LocalResultStore

__all__ = [
    "LocalResultStore",
    "ResultStore",
    "StoreUnavailable",
    "StoredObject",
    "StoredResult",
    "Variant",
    "open_store",
]


def open_store(settings: ServiceSettings) -> ResultStore:
    """The store ``QVGEN_RESULT_STORE`` names: the directory ``results_dir``, or the bucket
    ``s3_bucket`` (boto3 is imported only then)."""
    if settings.result_store is ResultStoreKind.S3:
        from service.storage.s3 import S3ResultStore

        return S3ResultStore(settings)
    return LocalResultStore(settings.results_dir)
