"""qvgen.video_io against real MP4 and PNG files written to a temporary directory."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qvgen.video_io import (
    THUMBNAIL_MEDIA_TYPE,
    probe_video,
    read_video,
    write_mp4,
    write_thumbnail,
)


def smooth_clip(frames: int = 17, height: int = 64, width: int = 48) -> np.ndarray:
    """Slowly drifting sinusoids per channel: smooth in space and time, like real footage."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    red = 128 + 100 * np.sin(2 * np.pi * (x + 2 * t) / 64) + 0 * y
    green = 128 + 100 * np.cos(2 * np.pi * (y + t) / 64) + 0 * x
    blue = 128 + 60 * np.sin(2 * np.pi * (x + y) / 64) + 0 * t
    return np.stack(np.broadcast_arrays(red, green, blue), axis=-1).round().astype(np.uint8)


def top_level_boxes(data: bytes) -> list[str]:
    """The types of the top-level ISO-BMFF boxes, in file order (size, type headers)."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:
            size = len(data) - offset
        boxes.append(kind.decode("latin-1"))
        offset += size
    return boxes


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def test_write_probe_read_round_trip(tmp_path: Path) -> None:
    clip = smooth_clip()
    path = write_mp4(clip, tmp_path / "clip.mp4", fps=8)

    info = probe_video(path)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.frame_count, info.width, info.height) == (17, 48, 64)
    assert info.fps == pytest.approx(8.0)

    decoded, fps = read_video(path)
    assert decoded.shape == clip.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(8.0)
    assert psnr(decoded, clip) > 30.0


def test_moov_box_precedes_mdat(tmp_path: Path) -> None:
    path = write_mp4(smooth_clip(), tmp_path / "clip.mp4", fps=8)
    boxes = top_level_boxes(path.read_bytes())
    assert "moov" in boxes and "mdat" in boxes, boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes


@pytest.mark.parametrize("threads", [0, 1])
def test_same_frames_give_same_bytes(tmp_path: Path, threads: int) -> None:
    clip = smooth_clip()
    files = {
        write_mp4(clip, tmp_path / f"{run}.mp4", fps=8, threads=threads).read_bytes()
        for run in range(4)
    }
    assert len(files) == 1


def test_fractional_frame_rate(tmp_path: Path) -> None:
    path = write_mp4(smooth_clip(frames=5), tmp_path / "ntsc.mp4", fps=30000 / 1001)
    assert probe_video(path).fps == pytest.approx(29.97, abs=1e-3)


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    write_mp4(smooth_clip(frames=3), target, fps=8)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="even width and height"):
        write_mp4(smooth_clip(frames=3, width=47), target, fps=8)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((2, 63, 64, 3), np.uint8), "64×63"),
        (np.zeros((2, 64, 64, 3), np.float32), "uint8"),
        (np.zeros((2, 64, 64), np.uint8), r"\[T, H, W, 3\]"),
        (np.zeros((0, 64, 64, 3), np.uint8), "at least 1 frame"),
    ],
)
def test_bad_frames_are_refused_with_the_value(
    tmp_path: Path, frames: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_mp4(frames, tmp_path / "bad.mp4", fps=8)


@pytest.mark.parametrize(
    ("fps", "crf", "message"),
    [(0.0, 18, "fps must be .* got 0.0"), (float("nan"), 18, "got nan"), (8.0, 52, "got 52")],
)
def test_bad_rate_or_quality_is_refused(tmp_path: Path, fps: float, crf: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_mp4(smooth_clip(frames=2), tmp_path / "bad.mp4", fps=fps, crf=crf)


def test_thumbnail_is_a_lossless_png(tmp_path: Path) -> None:
    frame = smooth_clip(frames=1)[0]
    path = write_thumbnail(frame, tmp_path / "thumb.png")
    assert THUMBNAIL_MEDIA_TYPE == "image/png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), frame)


def test_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    video = write_mp4(smooth_clip(frames=2), tmp_path / "clip.mp4", fps=8)
    thumb = write_thumbnail(smooth_clip(frames=1)[0], tmp_path / "thumb.png")
    assert video.stat().st_mode & 0o777 == expected
    assert thumb.stat().st_mode & 0o777 == expected
