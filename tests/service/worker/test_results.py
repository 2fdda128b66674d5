"""The local result store's sweep while peers sweep the same directory, and its check."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from service.queue.records import new_job_id
from service.storage import LocalResultStore, StoreUnavailable


def _old_job_dirs(root: Path, count: int) -> list[str]:
    """``count`` job directories of a deleted job each (a video, a thumbnail, a temp file),
    all older than any grace."""
    ids = [new_job_id() for _ in range(count)]
    past = time.time() - 3600
    for job_id in ids:
        directory = root / job_id
        directory.mkdir(parents=True)
        for name in ("attempt-1.mp4", "attempt-1.png", ".tmp-attempt-2.mp4"):
            (directory / name).write_bytes(b"x")
            os.utime(directory / name, (past, past))
    return ids


def test_a_directory_a_peer_removes_mid_sweep_is_skipped(tmp_path: Path) -> None:
    ids = _old_job_dirs(tmp_path, 3)
    store = LocalResultStore(tmp_path)

    def peer_got_there_first(job_id: str) -> set[str] | None:
        shutil.rmtree(tmp_path / job_id)  # between this sweep's listing and its look inside
        return None

    assert store.sweep(peer_got_there_first, grace_s=1) == 0
    assert not any((tmp_path / job_id).exists() for job_id in ids)


def test_an_io_error_is_logged_and_the_rest_swept(tmp_path: Path) -> None:
    ids = _old_job_dirs(tmp_path, 2)
    store = LocalResultStore(tmp_path)
    odd = tmp_path / ids[0] / "attempt-9"
    odd.mkdir()  # unlink of a directory: IsADirectoryError
    os.utime(odd, (time.time() - 3600,) * 2)
    not_a_dir = tmp_path / new_job_id()
    not_a_dir.write_bytes(b"a file where a job directory should be")
    assert store.sweep(lambda job_id: None, grace_s=1) == 6
    assert [p.name for p in (tmp_path / ids[0]).iterdir()] == ["attempt-9"]
    assert not (tmp_path / ids[1]).exists() and not_a_dir.is_file()
    assert LocalResultStore(tmp_path / "missing").sweep(lambda job_id: None, grace_s=1) == 0


def _sweep_concurrently(root: Path, sweepers: int) -> tuple[list[int], list[BaseException]]:
    removed: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            removed.append(LocalResultStore(root).sweep(lambda job_id: None, grace_s=1))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=sweep) for _ in range(sweepers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return removed, errors


def test_three_sweepers_at_once_remove_everything_without_an_error(tmp_path: Path) -> None:
    for trial in range(3):
        root = tmp_path / f"trial-{trial}"
        _old_job_dirs(root, 150)
        removed, errors = _sweep_concurrently(root, 3)
        assert errors == [] and len(removed) == 3, errors
        assert sum(removed) == 450 and list(root.iterdir()) == []


def test_kept_files_and_young_files_stay(tmp_path: Path) -> None:
    (job_id,) = _old_job_dirs(tmp_path, 1)
    directory = tmp_path / job_id
    (directory / "attempt-3.mp4").write_bytes(b"young")
    kept = {str(directory / "attempt-1.mp4"), str(directory / "attempt-1.png")}
    store = LocalResultStore(tmp_path)
    assert store.sweep(lambda _: kept, grace_s=1) == 1  # only the stale temporary file
    assert sorted(p.name for p in directory.iterdir()) == [
        "attempt-1.mp4",
        "attempt-1.png",
        "attempt-3.mp4",
    ]
    assert store.sweep(lambda _: None, grace_s=1) == 2  # record gone: all but the young file
    assert [p.name for p in directory.iterdir()] == ["attempt-3.mp4"]


def test_check_makes_the_directory_and_names_the_setting_when_it_cannot(tmp_path: Path) -> None:
    LocalResultStore(tmp_path / "new" / "results").check()
    assert (tmp_path / "new" / "results").is_dir()
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"not a directory")
    with pytest.raises(StoreUnavailable, match=f"QVGEN_RESULTS_DIR={blocked} is not a writable"):
        LocalResultStore(blocked).check()
