"""The training video folder: ``videos.txt`` and ``prompts.txt``, one entry per line.

Line i of ``videos.txt`` is a video path relative to the folder, line i of ``prompts.txt`` its
caption. Every problem is reported as ``DataError`` naming the file and the 1-based line:
an empty line, a video that does not exist, counts that differ; decoding problems are reported
the same way later (``frames.load_clip``), so a bad clip in a 100 000-line list is found by
its line number, not by bisecting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

VIDEOS_FILE = "videos.txt"
PROMPTS_FILE = "prompts.txt"


class DataError(ValueError):
    """A data problem; the message names the file and line at fault."""


@dataclass(frozen=True)
class Clip:
    """One training example: ``line`` is its 1-based line in both list files."""

    line: int
    video: Path
    prompt: str

    @property
    def where(self) -> str:
        return f"{VIDEOS_FILE} line {self.line} ({self.video.name})"


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} not found: a data folder holds {VIDEOS_FILE} and {PROMPTS_FILE}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another entry
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{path} line {number}: empty entry")
    if not lines:
        raise DataError(f"{path} holds no entries")
    return [line.rstrip("\r") for line in lines]


def read_folder(folder: str | Path) -> list[Clip]:
    """Parse and check the lists of ``folder`` (existence only; decoding comes later)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    videos = _read_lines(root / VIDEOS_FILE)
    prompts = _read_lines(root / PROMPTS_FILE)
    if len(videos) != len(prompts):
        shorter, longer = (
            (PROMPTS_FILE, VIDEOS_FILE)
            if len(prompts) < len(videos)
            else (VIDEOS_FILE, PROMPTS_FILE)
        )
        first_unpaired = min(len(videos), len(prompts)) + 1
        raise DataError(
            f"{root / VIDEOS_FILE} has {len(videos)} entries but {root / PROMPTS_FILE} has "
            f"{len(prompts)}: {longer} line {first_unpaired} has no partner in {shorter}"
        )
    clips = []
    for number, (video, prompt) in enumerate(zip(videos, prompts, strict=True), start=1):
        path = root / video.strip()
        if not path.is_file():
            raise DataError(
                f"{root / VIDEOS_FILE} line {number}: {video.strip()} not found ({path})"
            )
        clips.append(Clip(line=number, video=path, prompt=prompt.strip()))
    return clips


def folder_fingerprint(folder: str | Path, clips: list[Clip]) -> str:
    """SHA-256 over both list files and every video's size and modification time.

    Stat rather than content: re-hashing a large data set on every run would cost as much as
    decoding it; replacing a video updates its mtime, which changes the fingerprint.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    for name in (VIDEOS_FILE, PROMPTS_FILE):
        digest.update((root / name).read_bytes())
    for clip in clips:
        stat = clip.video.stat()
        digest.update(f"{clip.line}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
