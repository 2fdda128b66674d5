"""The local result store: a directory of ``<job id>/attempt-<n>.mp4``, ``.png`` and
``.spritesheet.jpg`` (``base.attempt_file_name``).

The path carries the attempt, so two attempts of one job (a worker presumed dead and the one
that replaced it) never write the same file; the fenced one deletes its own files. Files are
written to a temporary name and renamed (``qvgen.video_io``), so a reader never sees half a
video and a killed worker leaves only a hidden temporary file, which the sweep removes. A
reference is the file's absolute path; the API and the workers must see the same directory
(one host, or a volume they all mount).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from service.engine.output import write_video_files
from service.engine.types import GeneratedVideo
from service.queue.records import is_job_id
from service.storage.base import (
    KeptFiles,
    StoredObject,
    StoredResult,
    StoreUnavailable,
    Variant,
    attempt_file_name,
)

# Bytes per chunk a reader gets.
READ_CHUNK_BYTES = 256 * 1024

logger = logging.getLogger(__name__)


class LocalResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _job_dir(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def path(self, job_id: str, attempt: int, variant: Variant) -> Path:
        """Where attempt ``attempt`` of ``job_id`` writes its ``variant``."""
        return self._job_dir(job_id) / attempt_file_name(attempt, variant)

    def check(self) -> None:
        """The directory exists (made if need be) and takes a file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as error:
            raise StoreUnavailable(
                f"result store: QVGEN_RESULTS_DIR={self.root} is not a writable directory "
                f"({type(error).__name__}: {error})"
            ) from error

    def write(self, job_id: str, attempt: int, video: GeneratedVideo) -> StoredResult:
        written = write_video_files(
            video,
            self.path(job_id, attempt, Variant.VIDEO),
            self.path(job_id, attempt, Variant.THUMBNAIL),
            self.path(job_id, attempt, Variant.SPRITESHEET),
        )
        assert written.spritesheet is not None  # asked for above
        return StoredResult(
            video=str(written.video),
            thumbnail=str(written.thumbnail),
            spritesheet=str(written.spritesheet),
        )

    def delete(self, result: StoredResult) -> None:
        for ref in result.refs:
            path = self._file(ref)
            if path is not None:
                path.unlink(missing_ok=True)

    def delete_job(self, job_id: str, refs: Iterable[str] = ()) -> None:
        for ref in refs:
            path = self._file(ref)
            if path is not None:
                path.unlink(missing_ok=True)
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)

    def _file(self, ref: str | None) -> Path | None:
        """The path if it lies under the root and is a file (never serve anything else)."""
        if not ref:
            return None
        path = Path(ref).resolve()
        return path if path.is_relative_to(self.root) and path.is_file() else None

    def stat(self, ref: str | None) -> StoredObject | None:
        path = self._file(ref)
        if path is None:
            return None
        try:
            status = path.stat()
        except FileNotFoundError:
            return None
        # Starlette's FileResponse makes its entity tag from the same two numbers.
        etag = f'"{status.st_mtime_ns:x}-{status.st_size:x}"'
        return StoredObject(ref=str(path), size=status.st_size, etag=etag, modified=status.st_mtime)

    def read(self, ref: str, first: int, last: int) -> Iterator[bytes] | None:
        path = self._file(ref)
        if path is None:
            return None
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return None
        handle.seek(first)
        return _chunks(handle, last - first + 1)

    def presigned_url(self, ref: str, variant: Variant, filename: str, expires_s: int) -> None:
        """A directory has no URLs of its own: the API streams its files."""
        return None

    def sweep(self, kept_files: KeptFiles, grace_s: float) -> int:
        """Delete what no job needs, once older than ``grace_s``; returns files removed.

        ``kept_files(job_id)`` gives the paths the job's record points at, or None when the
        record is gone (deleted, or out of retention): then the whole directory goes. Peers
        sweep the same directory at the same time, so anything may vanish between a listing and
        its use: a missing file or directory is skipped, and any other I/O error is logged and
        skips that directory, never ends the sweep.
        """
        cutoff = time.time() - grace_s
        try:
            directories = [d for d in self.root.iterdir() if is_job_id(d.name)]
        except FileNotFoundError:
            return 0
        except OSError as error:
            logger.warning("cannot list the results directory %s: %s", self.root, error)
            return 0
        removed = 0
        for directory in directories:
            try:
                removed += self._sweep_job(directory, kept_files, cutoff)
            except FileNotFoundError:
                continue  # a peer removed it first
            except OSError as error:
                logger.warning("sweep skipped %s: %s", directory, error)
        return removed

    @staticmethod
    def _sweep_job(directory: Path, kept_files: KeptFiles, cutoff: float) -> int:
        if not directory.is_dir():
            return 0
        kept = kept_files(directory.name)
        removed = 0
        for path in list(directory.iterdir()):
            try:
                stale = path.stat().st_mtime < cutoff
                if stale and (
                    kept is None or (path.name.startswith(".") and str(path) not in kept)
                ):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # a peer removed it first
            except OSError as error:
                logger.warning("sweep left %s: %s", path, error)
        if kept is None:
            with contextlib.suppress(OSError):
                directory.rmdir()  # fails while not empty: a file younger than the grace stays
        return removed


def _chunks(handle: io.BufferedReader, remaining: int) -> Iterator[bytes]:
    with handle:
        while remaining > 0:
            chunk = handle.read(min(READ_CHUNK_BYTES, remaining))
            if not chunk:
                return  # truncated under us; the reader sees a short body
            remaining -= len(chunk)
            yield chunk
