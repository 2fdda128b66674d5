"""The result store's interface: what the worker, the API and the janitor ask of it.

A job's attempt stores three files (``Variant``): the MP4, its thumbnail and its spritesheet.
The store hands back a reference for each (``StoredResult``), which the job record keeps and
the store alone resolves again: a path for the local store, an object key for S3. Readers go
through ``stat`` and ``read`` (byte ranges), or ask for a URL the client fetches itself
(``presigned_url``); nothing outside a store knows whether its files are on a disk.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from qvgen.video_io import THUMBNAIL_MEDIA_TYPE, THUMBNAIL_SUFFIX
from service.engine.spritesheet import SPRITESHEET_MEDIA_TYPE, SPRITESHEET_SUFFIX
from service.engine.types import GeneratedVideo


class Variant(enum.StrEnum):
    """The files of one attempt, named as ``/content?variant=`` names them."""

    VIDEO = "video"
    THUMBNAIL = "thumbnail"
    SPRITESHEET = "spritesheet"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]

    @property
    def suffix(self) -> str:
        return _SUFFIXES[self]


_MEDIA_TYPES = {
    Variant.VIDEO: "video/mp4",
    Variant.THUMBNAIL: THUMBNAIL_MEDIA_TYPE,
    Variant.SPRITESHEET: SPRITESHEET_MEDIA_TYPE,
}
_SUFFIXES = {
    Variant.VIDEO: ".mp4",
    Variant.THUMBNAIL: THUMBNAIL_SUFFIX,
    Variant.SPRITESHEET: SPRITESHEET_SUFFIX,
}


def attempt_file_name(attempt: int, variant: Variant) -> str:
    """``attempt-<n>.mp4``, ``attempt-<n>.png``, ``attempt-<n>.spritesheet.jpg``: the attempt in
    the name, so that two attempts of one job never share a file (the fenced one deletes its
    own). Both stores lay a job's files out under the job's id with these names."""
    stem = f"attempt-{attempt}"
    if variant is Variant.SPRITESHEET:
        stem += ".spritesheet"
    return stem + variant.suffix


@dataclass(frozen=True)
class StoredResult:
    """One attempt's files, as references the job record keeps (``video_path``,
    ``thumbnail_path``, ``spritesheet_path``) and the store resolves again."""

    video: str
    thumbnail: str
    spritesheet: str

    @property
    def refs(self) -> tuple[str, str, str]:
        return self.video, self.thumbnail, self.spritesheet


@dataclass(frozen=True)
class StoredObject:
    """A stored file as a reader sees it: ``size`` bytes, an entity tag that changes whenever
    the content could have (quoted, as the ``ETag`` header carries it), and its modification
    time in unix seconds."""

    ref: str
    size: int
    etag: str
    modified: float


class StoreUnavailable(Exception):
    """The store could not do what was asked (unreachable, refused, missing bucket). The message
    is one line that names the setting to look at; the same call may succeed later."""


# kept(job_id) → the references the job's record points at, or None when the record is gone.
KeptFiles = Callable[[str], set[str] | None]


class ResultStore(Protocol):
    def check(self) -> None:
        """Raise ``StoreUnavailable`` unless this store can be written, read and deleted from
        now (a worker refuses to start otherwise)."""
        ...

    def write(self, job_id: str, attempt: int, video: GeneratedVideo) -> StoredResult:
        """Store one attempt's video, thumbnail and spritesheet; a reader never sees half a
        file. Two attempts of one job never share a reference. ``StoreUnavailable`` when the
        store fails: then nothing of this attempt is referenced, and what it did store goes
        with the job's other files."""
        ...

    def delete(self, result: StoredResult) -> None:
        """Remove one attempt's files (an attempt whose result was refused). Best effort: what a
        failing store keeps is removed with the job's files once its record is gone."""
        ...

    def delete_job(self, job_id: str, refs: Iterable[str] = ()) -> None:
        """Remove everything of ``job_id``: ``refs`` and whatever else the store holds for it.
        Best effort, as ``delete``: the sweep removes what a failing store kept."""
        ...

    def stat(self, ref: str | None) -> StoredObject | None:
        """The file behind ``ref`` if it is one of this store's and still exists, else None.
        ``StoreUnavailable`` when the store cannot say."""
        ...

    def read(self, ref: str, first: int, last: int) -> Iterator[bytes] | None:
        """Bytes ``first`` … ``last`` (inclusive) of the file behind ``ref``, in chunks; None
        when it is gone. The file is opened before this returns (``StoreUnavailable`` then), so
        a caller learns of a failure before it has sent anything."""
        ...

    def presigned_url(
        self, ref: str, variant: Variant, filename: str, expires_s: int
    ) -> str | None:
        """A URL that serves ``ref`` without credentials for ``expires_s`` seconds, as
        ``filename`` with ``variant``'s media type; None for a store that cannot make one."""
        ...

    def sweep(self, kept_files: KeptFiles, grace_s: float) -> int:
        """Remove what no job needs once older than ``grace_s``; returns the files removed."""
        ...
