"""Bad data stops with an error naming the file and the line; good data is cut to its bucket."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.video_folder import write_video_folder
from training.data.folder import DataError, read_folder
from training.data.frames import Bucket, load_clip, resize_and_crop


def test_a_good_folder_parses_in_order(tmp_path: Path) -> None:
    clips = read_folder(write_video_folder(tmp_path, clips=3))
    assert [c.line for c in clips] == [1, 2, 3]
    assert clips[1].video == tmp_path / "clips" / "clip1.mp4"
    assert clips[1].prompt == "a white bird flies over the sea"


def test_missing_video_names_file_and_line(tmp_path: Path) -> None:
    write_video_folder(tmp_path, clips=3)
    (tmp_path / "clips" / "clip1.mp4").unlink()
    with pytest.raises(DataError, match=r"videos\.txt line 2: clips/clip1\.mp4 not found"):
        read_folder(tmp_path)


def test_unreadable_video_names_file_and_line(tmp_path: Path) -> None:
    write_video_folder(tmp_path, clips=3)
    (tmp_path / "clips" / "clip2.mp4").write_bytes(b"this is not an mp4 file" * 10)
    clips = read_folder(tmp_path)
    with pytest.raises(DataError, match=r"videos\.txt line 3 \(clip2\.mp4\): cannot decode"):
        load_clip(clips[2], Bucket(9, 16, 16))


def test_count_mismatch_names_both_files_and_the_unpaired_line(tmp_path: Path) -> None:
    write_video_folder(tmp_path, clips=3)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(prompts.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(
        DataError,
        match=r"videos\.txt has 3 entries but .*prompts\.txt has 2: videos\.txt line 3 has no partner",
    ):
        read_folder(tmp_path)


def test_empty_line_names_file_and_line(tmp_path: Path) -> None:
    write_video_folder(tmp_path, clips=3)
    (tmp_path / "prompts.txt").write_text("a cat\n\na dog\n")
    with pytest.raises(DataError, match=r"prompts\.txt line 2: empty entry"):
        read_folder(tmp_path)


def test_too_short_clip_names_its_line(tmp_path: Path) -> None:
    clips = read_folder(write_video_folder(tmp_path, clips=1, frames=5))
    with pytest.raises(
        DataError, match=r"line 1 \(clip0\.mp4\): 5 frames, the bucket needs at least 9"
    ):
        load_clip(clips[0], Bucket(9, 16, 16))


def test_clip_is_centre_cropped_to_the_bucket_in_range(tmp_path: Path) -> None:
    clips = read_folder(write_video_folder(tmp_path, clips=1, frames=11))
    video = load_clip(clips[0], Bucket(9, 16, 16))
    assert video.shape == (3, 9, 16, 16)
    assert float(video.min()) >= -1.0 and float(video.max()) <= 1.0


def test_resize_and_crop_keeps_the_centre() -> None:
    # A 4×8 frame whose columns count 0..7: covering 4×4 keeps the scale, crops columns 2..5.
    frame = torch.arange(8.0).repeat(4, 1)[None, None].expand(1, 3, 4, 8)
    out = resize_and_crop(frame, 4, 4)
    assert out[0, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
