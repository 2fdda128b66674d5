"""PSNR and SSIM against hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.metrics import psnr, ssim


def _video(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(3, 16, 20, 3), dtype=np.uint8)


def test_identical_videos_have_ssim_one_and_the_capped_psnr() -> None:
    v = _video(0)
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-12)
    assert psnr(v, v) == pytest.approx(10 * math.log10(255**2 / 1e-10))


def test_psnr_of_a_uniform_offset() -> None:
    a = np.full((2, 8, 8, 3), 100, dtype=np.uint8)
    b = a + np.uint8(5)  # MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))


def test_more_noise_means_lower_ssim_and_psnr() -> None:
    v = _video(1)
    rng = np.random.default_rng(2)
    small = np.clip(v + rng.normal(0, 5, v.shape), 0, 255).astype(np.uint8)
    large = np.clip(v + rng.normal(0, 40, v.shape), 0, 255).astype(np.uint8)
    assert 1.0 > ssim(v, small) > ssim(v, large)
    assert psnr(v, small) > psnr(v, large)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(_video(0), _video(0)[:2])
