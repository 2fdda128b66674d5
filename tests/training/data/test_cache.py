"""Latents and prompt embeddings are computed once; a rerun reads them back untouched."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.training.video_folder import write_video_folder
from training.data.cache import MANIFEST_FILE, build_cache
from training.data.frames import Bucket


def test_second_build_is_a_cache_hit_and_other_buckets_get_their_own(
    tiny_wan_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_video_folder(tmp_path / "data", clips=2)
    root, cpu = tmp_path / "cache", torch.device("cpu")
    first = build_cache(tiny_wan_dir, data, Bucket(9, 16, 16), root, cpu, torch.float32)
    assert len(first) == 2
    latents, text = first.load(0)
    assert latents.shape == (4, 3, 4, 4)  # C, (9 − 1)/4 + 1, 16/4, 16/4
    assert text.shape[0] == 16 and first.empty_text.shape == text.shape
    files = {p: p.stat().st_mtime_ns for p in first.directory.iterdir()}

    with caplog.at_level(logging.INFO, logger="training.data.cache"):
        again = build_cache(tiny_wan_dir, data, Bucket(9, 16, 16), root, cpu, torch.float32)
    assert "latent cache hit" in caplog.text
    assert again.directory == first.directory
    assert {p: p.stat().st_mtime_ns for p in first.directory.iterdir()} == files
    assert torch.equal(again.load(0)[0], latents)

    other = build_cache(tiny_wan_dir, data, Bucket(9, 32, 16), root, cpu, torch.float32)
    assert other.directory != first.directory
    assert (other.directory / MANIFEST_FILE).is_file()
