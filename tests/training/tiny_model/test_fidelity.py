"""PSNR and SSIM of the comparison: exact values on known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.tiny_model.fidelity import PSNR_CAP, psnr, ssim


def _clip(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


def test_identical_clips_score_the_caps() -> None:
    clip = _clip(0)
    assert psnr(clip, clip) == PSNR_CAP
    assert ssim(clip, clip) == pytest.approx(1.0)


def test_psnr_of_a_uniform_offset() -> None:
    clip = np.full((2, 16, 16, 3), 100, dtype=np.uint8)
    assert psnr(clip + 10, clip) == pytest.approx(10 * math.log10(255**2 / 100))


def test_ssim_falls_for_unrelated_noise_and_is_symmetric() -> None:
    a, b = _clip(1), _clip(2)
    assert ssim(a, b) < 0.1
    assert ssim(a, b) == pytest.approx(ssim(b, a))


def test_mismatched_clips_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        psnr(_clip(0), _clip(0)[:2])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))
