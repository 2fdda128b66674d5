"""The FSDP2 memory plan: calibrated on the measured 1.3B step, and what it says of 14B."""

from __future__ import annotations

import pytest

from benchmarks.qat_memory_plan import (
    MEASURED_PEAK_GIB,
    MEASURED_RANK,
    ModelCounts,
    per_gpu_gib,
    tokens,
)
from benchmarks.random_models import WAN_2_1_1_3B, WAN_2_1_14B


def test_the_plan_reproduces_the_step_it_is_calibrated_on() -> None:
    counts = ModelCounts.of(WAN_2_1_1_3B, MEASURED_RANK)
    assert tokens(17, 480, 832) == 7800
    assert per_gpu_gib(counts, 1, 7800) == pytest.approx(MEASURED_PEAK_GIB)


def test_wan_14b_at_480p_81_frames_needs_four_h200s() -> None:
    counts = ModelCounts.of(WAN_2_1_14B, 32)
    assert counts.params == pytest.approx(14.29e9, rel=1e-3)
    n = tokens(81, 480, 832)
    per_gpu = [per_gpu_gib(counts, g, n) for g in (1, 2, 4, 8)]
    assert per_gpu == sorted(per_gpu, reverse=True)
    assert per_gpu[1] > 139 > per_gpu[2]
