"""Fixtures shared across the test tree. Keep this small: one fixture per shared resource."""

from __future__ import annotations

from pathlib import Path

import pytest

from qvgen.tiny_pipelines import build_tiny_cogvideox, build_tiny_wan

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded ``WanPipeline`` directory (``qvgen.tiny_pipelines`` defaults), built once."""
    return build_tiny_wan(tmp_path_factory.mktemp("tiny-wan"), seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_cogvideox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded ``CogVideoXPipeline`` directory, built once per session."""
    return build_tiny_cogvideox(tmp_path_factory.mktemp("tiny-cogvideox"), seed=TINY_SEED)
