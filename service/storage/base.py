"""The result store's interface: what the worker, the API and the janitor ask of it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.engine.types import GeneratedVideo


@dataclass(frozen=True)
class StoredResult:
    """One attempt's files, as references the job record keeps (``video_path``,
    ``thumbnail_path``) and the store resolves again."""

    video: str
    thumbnail: str


# kept(job_id) → the references the job's record points at, or None when the record is gone.
KeptFiles = Callable[[str], set[str] | None]


class ResultStore(Protocol):
    def write(self, job_id: str, attempt: int, video: GeneratedVideo) -> StoredResult:
        """Store one attempt's video and thumbnail; a reader never sees half a file. Two
        attempts of one job never share a reference."""
        ...

    def delete(self, result: StoredResult) -> None:
        """Remove one attempt's files (an attempt whose result was refused)."""
        ...

    def delete_job(self, job_id: str, refs: Iterable[str] = ()) -> None:
        """Remove everything of ``job_id``: ``refs`` and whatever else the store holds for it."""
        ...

    def local_file(self, ref: str | None) -> Path | None:
        """The file behind ``ref`` if it is one of this store's and still exists, else None."""
        ...

    def sweep(self, kept_files: KeptFiles, grace_s: float) -> int:
        """Remove what no job needs once older than ``grace_s``; returns the files removed."""
        ...
