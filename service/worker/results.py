"""The results store: a directory of ``<job id>/attempt-<n>.mp4`` and ``.png``.

The path carries the attempt, so two attempts of one job (a worker presumed dead and the one
that replaced it) never write the same file; the fenced one deletes its own files. Files are
written to a temporary name and renamed (``qvgen.video_io``), so a reader never sees half a
video and a killed worker leaves only a hidden temporary file, which the sweep removes.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.engine.output import write_video_files
from service.engine.types import GeneratedVideo
from service.queue.records import is_job_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultPaths:
    video: Path
    thumbnail: Path


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def paths(self, job_id: str, attempt: int) -> ResultPaths:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        directory = self.root / job_id
        return ResultPaths(
            video=directory / f"attempt-{attempt}.mp4",
            thumbnail=directory / f"attempt-{attempt}.png",
        )

    def write(self, job_id: str, attempt: int, video: GeneratedVideo) -> ResultPaths:
        paths = self.paths(job_id, attempt)
        write_video_files(video, paths.video, paths.thumbnail)
        return paths

    def delete(self, paths: ResultPaths) -> None:
        paths.video.unlink(missing_ok=True)
        paths.thumbnail.unlink(missing_ok=True)

    def sweep(self, kept_files: Callable[[str], set[str] | None], grace_s: float) -> int:
        """Delete what no job needs, once older than ``grace_s``; returns files removed.

        ``kept_files(job_id)`` gives the paths the job's record points at, or None when the
        record is gone (deleted, or out of retention): then the whole directory goes.
        """
        if not self.root.is_dir():
            return 0
        removed = 0
        cutoff = time.time() - grace_s
        for directory in self.root.iterdir():
            if not directory.is_dir() or not is_job_id(directory.name):
                continue
            kept = kept_files(directory.name)
            for path in directory.iterdir():
                stale = path.stat().st_mtime < cutoff
                if stale and (
                    kept is None or (path.name.startswith(".") and str(path) not in kept)
                ):
                    path.unlink(missing_ok=True)
                    removed += 1
            if kept is None and not any(directory.iterdir()):
                shutil.rmtree(directory, ignore_errors=True)
        return removed
