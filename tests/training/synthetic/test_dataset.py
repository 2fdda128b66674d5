"""``qvgen data synthetic`` end to end: the layout on disk, ground truth, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qvgen.cli import main
from qvgen.video_io import probe_video, read_video
from training.synthetic.dataset import (
    METADATA_FILE,
    PROMPTS_FILE,
    VIDEOS_FILE,
    read_metadata,
    write_dataset,
)
from training.synthetic.render import render_clip
from training.synthetic.vocabulary import Prompt


def synthetic(out: Path, count: int, seed: int, *extra: str) -> None:
    argv = ["data", "synthetic", "--out", str(out), "--count", str(count), "--seed", str(seed)]
    assert main([*argv, *extra]) == 0


def test_cli_writes_the_video_folder_layout(tmp_path: Path) -> None:
    out = tmp_path / "set"
    synthetic(out, 6, 11, "--frames", "9", "--size", "32", "--fps", "4")
    videos = (out / VIDEOS_FILE).read_text().splitlines()
    prompts = (out / PROMPTS_FILE).read_text().splitlines()
    assert videos == [f"videos/{i:06d}.mp4" for i in range(6)]
    assert len(prompts) == 6
    records = read_metadata(out)
    for record, video, prompt in zip(records, videos, prompts, strict=True):
        assert Prompt.parse(prompt) == record.spec.prompt
        info = probe_video(out / video)
        assert (info.frame_count, info.width, info.height, info.fps) == (9, 32, 32, 4.0)
        decoded, _ = read_video(out / video)
        # The MP4 holds the clip its metadata describes (up to compression).
        rendered = render_clip(record.spec).astype(np.float64)
        assert np.abs(decoded - rendered).mean() < 3.0


def test_same_seed_gives_same_frames_and_bytes(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", count=5, seed=7)
    second = write_dataset(tmp_path / "b", count=5, seed=7)
    assert first == second
    for record in first:
        a, b = (tmp_path / name / record.video for name in ("a", "b"))
        np.testing.assert_array_equal(read_video(a)[0], read_video(b)[0])
        assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(
        render_clip(first[0].spec), render_clip(read_metadata(tmp_path / "b")[0].spec)
    )


def test_other_seed_gives_other_clips_and_clips_do_not_depend_on_count(tmp_path: Path) -> None:
    base = write_dataset(tmp_path / "a", count=4, seed=7)
    other = write_dataset(tmp_path / "b", count=4, seed=8)
    longer = write_dataset(tmp_path / "c", count=6, seed=7)
    assert [r.spec for r in base] != [r.spec for r in other]
    assert [r.spec for r in longer[:4]] == [r.spec for r in base]
    assert (
        (tmp_path / "c" / METADATA_FILE)
        .read_text()
        .startswith((tmp_path / "a" / METADATA_FILE).read_text())
    )


def test_existing_data_set_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", count=1, seed=0, frames=3, side=16)
    with pytest.raises(FileExistsError, match=r"videos\.txt"):
        write_dataset(tmp_path / "a", count=1, seed=0)
    with pytest.raises(ValueError, match="got 0"):
        write_dataset(tmp_path / "b", count=0, seed=0)
    with pytest.raises(ValueError, match="got -1"):
        write_dataset(tmp_path / "b", count=1, seed=-1)
    with pytest.raises(ValueError, match="got 65"):
        write_dataset(tmp_path / "b", count=1, seed=0, side=65)


def test_metadata_that_disagrees_with_the_index_is_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", count=2, seed=0, frames=3, side=16)
    prompts = tmp_path / "a" / PROMPTS_FILE
    prompts.write_text(prompts.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="disagrees"):
        read_metadata(tmp_path / "a")
