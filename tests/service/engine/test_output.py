from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qvgen.cli import main
from qvgen.video_io import probe_video, read_video
from service.engine.diffusers_engine import DiffusersEngine
from service.engine.output import default_thumbnail_path, write_video_files
from service.engine.types import GenerationRequest


@pytest.mark.parametrize("fixture", ["tiny_wan_dir", "tiny_cogvideox_dir"])
def test_generation_writes_a_valid_mp4_and_thumbnail(
    fixture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    engine = DiffusersEngine.from_pretrained(request.getfixturevalue(fixture))
    video = engine.generate(
        GenerationRequest(prompt="a dog swims", width=32, height=16, num_frames=17, fps=12)
    )
    files = write_video_files(video, tmp_path / "clip.mp4")
    info = probe_video(files.video)
    assert (info.frame_count, info.width, info.height) == (17, 32, 16)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert info.fps == pytest.approx(12)
    decoded, _ = read_video(files.video)
    # H.264 yuv420p is lossy, and random tiny models make noise-like frames whose chroma does not
    # survive subsampling; the mean level of every frame does.
    assert decoded.shape == video.frames.shape
    levels = np.abs(decoded.mean(axis=(1, 2, 3)) - video.frames.mean(axis=(1, 2, 3)))
    assert levels.max() < 4
    assert files.thumbnail == tmp_path / "clip.png"
    assert np.array_equal(np.asarray(Image.open(files.thumbnail)), video.frames[0])


def test_default_thumbnail_sits_beside_the_video() -> None:
    assert default_thumbnail_path("/x/y/clip.mp4") == Path("/x/y/clip.png")


def test_qvgen_generate_writes_the_requested_video(tiny_wan_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    thumbnail = tmp_path / "thumb.png"
    argv = ["generate", "--model", str(tiny_wan_dir), "--prompt", "a cat", "--out", str(out)]
    options = ["--thumbnail", str(thumbnail), "--width", "16", "--height", "32"]
    options += ["--frames", "5", "--steps", "2", "--seed", "3", "--fps", "10"]
    assert main([*argv, *options]) == 0
    info = probe_video(out)
    assert (info.frame_count, info.width, info.height) == (5, 16, 32)
    assert Image.open(thumbnail).size == (16, 32)


def test_qvgen_generate_refuses_a_bad_request(tiny_wan_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    argv = ["generate", "--model", str(tiny_wan_dir), "--prompt", "a cat", "--out", str(out)]
    assert main([*argv, "--frames", "6"]) == 2
    assert not out.exists()
