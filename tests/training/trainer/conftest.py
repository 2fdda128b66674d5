"""Shared data for the trainer tests: one tiny video folder and one latent cache root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.video_folder import write_video_folder


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video_folder(tmp_path_factory.mktemp("videos"), clips=3)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("latent-cache")
