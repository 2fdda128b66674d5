"""Decode a clip and bring it to the training resolution bucket.

A bucket is (frames T, height H, width W). A clip of T' ≥ T frames of size H' × W' becomes

1. its T middle frames (frames ⌊(T' − T)/2⌋ … ⌊(T' − T)/2⌋ + T − 1): the centre in time;
2. resized by the factor max(H / H', W / W') (bilinear, antialiased), so that the resized clip
   covers the bucket, aspect ratio kept;
3. centre-cropped to H × W;
4. scaled from uint8 [0, 255] to float [−1, 1], the VAE's input range, as [3, T, H, W].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qvgen.video_io import read_video
from training.data.folder import Clip, DataError


@dataclass(frozen=True)
class Bucket:
    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name, value in (
            ("frames", self.frames),
            ("height", self.height),
            ("width", self.width),
        ):
            if value < 1:
                raise ValueError(f"bucket {name} must be ≥ 1, got {value}")


def centre_window(frames: np.ndarray, count: int) -> np.ndarray:
    start = (frames.shape[0] - count) // 2
    return frames[start : start + count]


def resize_and_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T, 3, H', W'] float → [T, 3, height, width]: cover-resize then centre crop."""
    _, _, src_h, src_w = video.shape
    factor = max(height / src_h, width / src_w)
    new_h = max(height, math.ceil(src_h * factor - 1e-6))
    new_w = max(width, math.ceil(src_w * factor - 1e-6))
    if (new_h, new_w) != (src_h, src_w):
        video = F.interpolate(
            video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return video[:, :, top : top + height, left : left + width]


def load_clip(clip: Clip, bucket: Bucket) -> torch.Tensor:
    """The clip as float32 [3, T, H, W] in [−1, 1]; ``DataError`` names its line on failure."""
    try:
        frames, _fps = read_video(clip.video)
    except Exception as err:  # PyAV raises many types for a broken file; all mean the same here
        raise DataError(f"{clip.where}: cannot decode {clip.video}: {err}") from err
    if frames.shape[0] < bucket.frames:
        raise DataError(
            f"{clip.where}: {frames.shape[0]} frames, the bucket needs at least {bucket.frames}"
        )
    window = torch.from_numpy(np.ascontiguousarray(centre_window(frames, bucket.frames)))
    video = window.permute(0, 3, 1, 2).float()  # [T, 3, H', W']
    video = resize_and_crop(video, bucket.height, bucket.width).clamp(0.0, 255.0)
    return (video / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()
