"""The spritesheet: which frames it shows, its grid, and that each tile is its frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.engine.spritesheet import (
    MAX_COLUMNS,
    MAX_TILES,
    TILE_MAX_SIDE,
    SpritesheetLayout,
    spritesheet_image,
    write_spritesheet,
)


def test_frames_are_spread_evenly_from_the_first_to_the_last() -> None:
    assert SpritesheetLayout.for_clip(1, 16, 16).frames == (0,)
    assert SpritesheetLayout.for_clip(3, 16, 16).frames == (0, 1, 2)
    long = SpritesheetLayout.for_clip(81, 16, 16)
    assert len(long.frames) == MAX_TILES and long.frames[0] == 0 and long.frames[-1] == 80
    assert long.frames == tuple(round(k * 80 / 24) for k in range(25))
    steps = np.diff(long.frames)
    assert steps.min() >= 3 and steps.max() <= 4


@pytest.mark.parametrize(
    ("frames", "width", "height", "grid", "tile"),
    [
        (1, 16, 16, (1, 1), (16, 16)),
        (7, 32, 16, (5, 2), (32, 16)),
        (17, 64, 64, (5, 4), (64, 64)),
        (121, 832, 480, (5, 5), (TILE_MAX_SIDE, 148)),
        (5, 480, 832, (5, 1), (148, TILE_MAX_SIDE)),
    ],
)
def test_the_grid_and_tile_size(
    frames: int, width: int, height: int, grid: tuple[int, int], tile: tuple[int, int]
) -> None:
    layout = SpritesheetLayout.for_clip(frames, width, height)
    assert (layout.columns, layout.rows) == grid and layout.columns <= MAX_COLUMNS
    assert (layout.tile_width, layout.tile_height) == tile
    assert layout.size == (grid[0] * tile[0], grid[1] * tile[1])


def test_each_tile_is_its_frame_and_the_rest_is_black(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    levels = rng.integers(30, 220, size=(6, 3))
    frames = np.broadcast_to(levels[:, None, None, :], (6, 8, 12, 3)).astype(np.uint8)
    sheet = np.asarray(spritesheet_image(frames))
    assert sheet.shape == (2 * 8, 5 * 12, 3)
    for index in range(6):
        row, column = divmod(index, 5)
        tile = sheet[row * 8 : (row + 1) * 8, column * 12 : (column + 1) * 12]
        assert np.array_equal(tile, frames[index])  # lossless in memory
    assert not sheet[8:, 12:].any()
    path = write_spritesheet(frames, tmp_path / "nested" / "sheet.jpg")
    decoded = Image.open(path)
    assert decoded.format == "JPEG" and decoded.size == (60, 16)
    assert [p.name for p in path.parent.iterdir()] == ["sheet.jpg"]  # no temporary file left
    error = np.abs(np.asarray(decoded, dtype=np.int16)[:8, :12] - frames[0]).mean()
    assert error < 4


def test_bad_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        spritesheet_image(np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="≥ 1 frame"):
        SpritesheetLayout.for_clip(0, 4, 4)
