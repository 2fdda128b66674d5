"""Frame-level fidelity of a quantized video against its full-precision counterpart.

Both videos are uint8 RGB [T, H, W, 3] from the same prompt, seed and settings.

PSNR (dB) over the whole clip: 10 · log10(255² / MSE), MSE the mean squared difference of all
values. Identical clips have MSE 0; it is floored at 1e-10 so they report 148.1 dB rather than
infinity (JSON has no infinity).

SSIM (Wang et al. 2004) on the luma Y = 0.299 R + 0.587 G + 0.114 B of each frame, Gaussian
window of 11 px (σ = 1.5; smaller, odd, on frames under 11 px), constants C1 = (0.01·255)²,
C2 = (0.03·255)², computed on the valid region (no padding), averaged over pixels, then frames.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MIN_MSE = 1e-10
_LUMA = (0.299, 0.587, 0.114)
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, v in (("reference", a), ("candidate", b)):
        if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"{name} must be uint8 [T, H, W, 3], got {v.dtype} {v.shape}")
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    _check_pair(reference, candidate)
    diff = reference.astype(np.float64) - candidate.astype(np.float64)
    mse = max(float(np.mean(diff * diff)), MIN_MSE)
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _luma(video: np.ndarray) -> torch.Tensor:
    rgb = torch.from_numpy(video).double()
    weights = torch.tensor(_LUMA, dtype=torch.float64)
    return (rgb * weights).sum(-1).unsqueeze(1)  # [T, 1, H, W]


def ssim(reference: np.ndarray, candidate: np.ndarray) -> float:
    _check_pair(reference, candidate)
    _, h, w, _ = reference.shape
    size = min(11, h, w)
    size -= 1 - size % 2  # odd
    g = _gaussian_window(size)
    kernel_h, kernel_w = g.view(1, 1, size, 1), g.view(1, 1, 1, size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kernel_h), kernel_w)

    x, y = _luma(reference), _luma(candidate)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    denominator = (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    per_frame = (numerator / denominator).mean(dim=(1, 2, 3))
    return float(per_frame.mean())
