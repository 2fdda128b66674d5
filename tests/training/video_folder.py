"""A tiny training video folder written with real MP4 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qvgen.video_io import write_mp4

PROMPTS = (
    "a red car drives on the street",
    "a white bird flies over the sea",
    "a black dog runs in the forest",
    "the sun shines on a blue river",
)


def moving_pattern(seed: int, frames: int = 11, height: int = 24, width: int = 20) -> np.ndarray:
    """A smooth coloured gradient that drifts by one pixel a frame: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, size=3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        wave = 0.5 + 0.5 * np.sin((xs + ys + 2 * t) / 4.0 + seed)
        out[t] = np.clip(base * wave[..., None] + 40 * wave[..., None], 0, 255).astype(np.uint8)
    return out


def write_video_folder(root: Path, clips: int = 4, frames: int = 11) -> Path:
    """``clips`` MP4s (24×20, ``frames`` frames) with videos.txt and prompts.txt."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(clips):
        name = f"clips/clip{i}.mp4"
        (root / "clips").mkdir(exist_ok=True)
        write_mp4(moving_pattern(i, frames), root / name, fps=8)
        names.append(name)
    (root / "videos.txt").write_text("".join(n + "\n" for n in names))
    (root / "prompts.txt").write_text(
        "".join(PROMPTS[i % len(PROMPTS)] + "\n" for i in range(clips))
    )
    return root
