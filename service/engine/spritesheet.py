"""A clip's spritesheet: frames sampled evenly over the clip, laid out as one JPEG grid.

What ``/v1/videos/{id}/content?variant=spritesheet`` serves (OpenAI's Videos API names the
variant; its clients save it as ``.jpg``). JPEG, not the thumbnail's PNG: a sheet holds up to
``MAX_TILES`` frames, and for the photographic frames a real model makes JPEG is several times
smaller at a quality no preview needs more of (a scrubber, a catalogue), while a lossless copy
of every frame is the MP4's job.

Layout, row-major from the top left: n = min(T, ``MAX_TILES``) tiles showing frames
i_k = round(k · (T − 1) / (n − 1)), k = 0 … n − 1 (the first and the last frame included);
min(n, ``MAX_COLUMNS``) columns, as many rows as the tiles need, cells past the last tile
black. A tile is its frame scaled by min(1, ``TILE_MAX_SIDE`` / max(H, W)), never enlarged.
"""

from __future__ import annotations

import io
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SPRITESHEET_MEDIA_TYPE = "image/jpeg"
SPRITESHEET_SUFFIX = ".jpg"
MAX_TILES = 25
MAX_COLUMNS = 5
TILE_MAX_SIDE = 256
JPEG_QUALITY = 85


@dataclass(frozen=True)
class SpritesheetLayout:
    """Which frames a sheet shows and how: ``frames`` are indices into the clip, row-major."""

    frames: tuple[int, ...]
    columns: int
    rows: int
    tile_width: int
    tile_height: int

    @classmethod
    def for_clip(cls, num_frames: int, width: int, height: int) -> SpritesheetLayout:
        if num_frames < 1 or width < 1 or height < 1:
            raise ValueError(
                f"a spritesheet needs ≥ 1 frame of ≥ 1×1 pixels, got {num_frames} of {width}×{height}"
            )
        tiles = min(num_frames, MAX_TILES)
        if tiles == 1:
            frames: tuple[int, ...] = (0,)
        else:
            span, gaps = num_frames - 1, tiles - 1
            frames = tuple((k * span + gaps // 2) // gaps for k in range(tiles))
        columns = min(tiles, MAX_COLUMNS)
        scale = min(1.0, TILE_MAX_SIDE / max(width, height))
        return cls(
            frames=frames,
            columns=columns,
            rows=math.ceil(tiles / columns),
            tile_width=max(1, round(width * scale)),
            tile_height=max(1, round(height * scale)),
        )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sheet in pixels."""
        return self.columns * self.tile_width, self.rows * self.tile_height


def spritesheet_image(frames: np.ndarray) -> Image.Image:
    """The sheet of RGB frames uint8 [T, H, W, 3] (``SpritesheetLayout.for_clip``)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 [T, H, W, 3], got dtype {frames.dtype} shape {frames.shape}"
        )
    count, height, width, _ = frames.shape
    layout = SpritesheetLayout.for_clip(count, width, height)
    sheet = Image.new("RGB", layout.size)
    tile_size = (layout.tile_width, layout.tile_height)
    for position, index in enumerate(layout.frames):
        tile = Image.fromarray(frames[index])
        if tile.size != tile_size:
            tile = tile.resize(tile_size, Image.Resampling.LANCZOS)
        row, column = divmod(position, layout.columns)
        sheet.paste(tile, (column * layout.tile_width, row * layout.tile_height))
    return sheet


def write_spritesheet(frames: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write the sheet of ``frames`` as a JPEG at ``path``, atomically (a temporary name beside
    it, then a rename, as ``qvgen.video_io`` writes); returns the path."""
    encoded = io.BytesIO()
    spritesheet_image(frames).save(encoded, format="JPEG", quality=JPEG_QUALITY)
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.parent / f".{destination.name}.{secrets.token_hex(8)}{SPRITESHEET_SUFFIX}"
    try:
        tmp.write_bytes(encoded.getvalue())
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    return destination
