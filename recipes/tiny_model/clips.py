"""Training clips of the synthetic task, rendered straight into memory.

The base model trains on the renderer's frames, not on MP4 files: H.264 would add its own
artefacts to what the VAE learns to reproduce, and rendering in worker processes is faster than
encoding and decoding. Clip i of seed S is ``dataset.clip_spec(S, i, …)``, the very clip
``qvgen data synthetic --seed S`` writes as its i-th file, so the training set is reproducible
and an evaluation set drawn from another seed shares no clip with it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from training.synthetic.dataset import clip_spec
from training.synthetic.render import render_clip

logger = logging.getLogger(__name__)

_CHUNK = 64  # clips per worker task: large enough to amortise the pickling of frames


@dataclass(frozen=True)
class ClipSet:
    """``frames`` uint8 [N, T, H, W, 3] RGB and the prompt of each clip."""

    frames: torch.Tensor
    prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def video_batch(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Clips ``indices`` as float [B, 3, T, H, W] in [−1, 1], the VAE's input range."""
        x = self.frames[indices].to(device, non_blocking=True)
        return x.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def _render_range(args: tuple[int, int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    seed, start, stop, frames, side = args
    specs = [clip_spec(seed, i, frames, side) for i in range(start, stop)]
    return np.stack([render_clip(s) for s in specs]), [s.prompt.text for s in specs]


def render_clips(seed: int, count: int, frames: int, side: int, workers: int) -> ClipSet:
    """Clips 0 … count − 1 of data-set seed ``seed``, rendered by ``workers`` processes."""
    if count < 1 or workers < 1:
        raise ValueError(f"count and workers must be ≥ 1, got {count} and {workers}")
    tasks = [
        (seed, start, min(start + _CHUNK, count), frames, side) for start in range(0, count, _CHUNK)
    ]
    out = np.empty((count, frames, side, side, 3), dtype=np.uint8)
    prompts: list[str] = []
    bar = tqdm(total=count, desc="render clips", unit="clip")
    if workers == 1:
        results = map(_render_range, tasks)
        for (_, start, stop, _, _), (chunk, texts) in zip(tasks, results, strict=True):
            out[start:stop] = chunk
            prompts.extend(texts)
            bar.update(stop - start)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for (_, start, stop, _, _), (chunk, texts) in zip(
                tasks, pool.map(_render_range, tasks), strict=True
            ):
                out[start:stop] = chunk
                prompts.extend(texts)
                bar.update(stop - start)
    bar.close()
    logger.info("rendered %d clips of %d×%d×%d (seed %d)", count, frames, side, side, seed)
    return ClipSet(torch.from_numpy(out), tuple(prompts))
