"""A generation's files: the H.264 MP4, its thumbnail and its spritesheet, encoded in process.

The MP4 and the thumbnail are written through ``qvgen.video_io`` (yuv420p, fast-start, atomic
writes), so what the service stores is what every other part of the project reads. The thumbnail
is the first frame, which is also what a browser's ``<video>`` element shows before playback
starts; the spritesheet (``service.engine.spritesheet``) is a JPEG grid of frames sampled over the
clip. All three come from the decoded frames in memory, never from the encoded MP4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qvgen.video_io import THUMBNAIL_SUFFIX, write_mp4, write_thumbnail
from service.engine.spritesheet import write_spritesheet
from service.engine.types import GeneratedVideo


@dataclass(frozen=True)
class VideoFiles:
    """Where one generation's files were written (``spritesheet`` None when not asked for)."""

    video: Path
    thumbnail: Path
    spritesheet: Path | None = None


def default_thumbnail_path(video_path: str | Path) -> Path:
    """``clip.mp4`` → ``clip.png`` beside it."""
    return Path(video_path).with_suffix(THUMBNAIL_SUFFIX)


def write_video_files(
    video: GeneratedVideo,
    video_path: str | Path,
    thumbnail_path: str | Path | None = None,
    spritesheet_path: str | Path | None = None,
) -> VideoFiles:
    """Encode ``video`` as an MP4 at its fps, its first frame as a PNG thumbnail, and, when
    ``spritesheet_path`` is given, its spritesheet as a JPEG there.

    The thumbnail goes to ``thumbnail_path``, by default beside the video (``default_thumbnail_path``).
    The encoder picks its thread count (frames here are large; byte-reproducible files are not
    needed, unlike for data sets).
    """
    mp4 = write_mp4(video.frames, video_path, fps=video.fps, threads=0)
    thumbnail = write_thumbnail(
        video.frames[0],
        thumbnail_path if thumbnail_path is not None else default_thumbnail_path(mp4),
    )
    sheet = None if spritesheet_path is None else write_spritesheet(video.frames, spritesheet_path)
    return VideoFiles(video=mp4, thumbnail=thumbnail, spritesheet=sheet)
