"""How close a quantized model's clip is to the full-precision one: PSNR and SSIM.

Both compare uint8 RGB clips [T, H, W, 3] frame by frame, on the 0–255 scale:

- PSNR = 10·log10(255² / MSE) with the MSE over the whole clip, capped at ``PSNR_CAP`` dB for
  identical clips (MSE 0);
- SSIM (Wang et al. 2004) per frame and channel with an 11×11 Gaussian window of σ 1.5,
  C₁ = (0.01·255)², C₂ = (0.03·255)², averaged over the valid (unpadded) windows, channels and
  frames.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0
_WINDOW = 11
_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def psnr(clip: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of ``clip`` against ``reference`` (uint8, same shape)."""
    _check_pair(clip, reference)
    mse = float(np.mean((clip.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(_WINDOW, dtype=torch.float64) - (_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * _SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, _WINDOW, _WINDOW)


def ssim(clip: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM of ``clip`` against ``reference`` (uint8 [T, H, W, 3], H, W ≥ 11)."""
    _check_pair(clip, reference)
    if min(clip.shape[1:3]) < _WINDOW:
        raise ValueError(f"SSIM needs frames of at least {_WINDOW}×{_WINDOW}, got {clip.shape}")
    a = torch.from_numpy(clip).double().permute(0, 3, 1, 2).reshape(-1, 1, *clip.shape[1:3])
    b = torch.from_numpy(reference).double().permute(0, 3, 1, 2).reshape(-1, 1, *clip.shape[1:3])
    w = _gaussian_window()
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a**2
    var_b = F.conv2d(b * b, w) - mu_b**2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    denominator = (mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2)
    return float((numerator / denominator).mean())


def _check_pair(clip: np.ndarray, reference: np.ndarray) -> None:
    if clip.shape != reference.shape or clip.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError(
            f"need two uint8 clips of one shape, got {clip.dtype} {clip.shape} and "
            f"{reference.dtype} {reference.shape}"
        )
