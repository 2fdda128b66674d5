"""``cache_calibration.json``: written atomically, read strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qvgen.checkpoint.cache_calibration import (
    CALIBRATION_FILE,
    CacheCalibration,
    CalibrationError,
    MagCacheEntry,
    read_calibration,
    write_calibration,
)


def entry(steps: int = 4) -> MagCacheEntry:
    return MagCacheEntry(
        num_inference_steps=steps,
        guidance_scale=5.0,
        size="64x64",
        num_frames=17,
        prompts=2,
        ratios={"cond": (1.0, 0.9, 0.8, 1.2)[:steps], "uncond": (1.0, 0.7, 0.8, 1.0)[:steps]},
    )


def test_round_trip_keeps_every_step_count(tmp_path: Path) -> None:
    assert read_calibration(tmp_path) == CacheCalibration()  # no file: nothing calibrated
    write_calibration(tmp_path, CacheCalibration().with_magcache(entry(4)))
    write_calibration(tmp_path, read_calibration(tmp_path).with_magcache(entry(3)))
    read = read_calibration(tmp_path)
    assert sorted(read.magcache) == [3, 4]
    assert read.magcache[4] == entry(4)
    assert read.magcache[4].mag_ratios == pytest.approx((1.0, 0.8, 0.8, 1.1))
    stored = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert stored["magcache"][1]["mag_ratios"] == pytest.approx([1.0, 0.8, 0.8, 1.1])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a qvgen-cache-calibration"),
        ({"format_version": 2}, "format_version"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_reader_refuses_other_files(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = CacheCalibration().with_magcache(entry()).to_dict() | change
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=message):
        read_calibration(tmp_path)


def test_entries_must_match_their_step_count_and_be_positive() -> None:
    with pytest.raises(CalibrationError, match="3 values for 4 steps"):
        MagCacheEntry(4, 5.0, "64x64", 17, 1, {"cond": (1.0, 1.0, 1.0)})
    with pytest.raises(CalibrationError, match="finite and positive"):
        MagCacheEntry(2, 5.0, "64x64", 17, 1, {"cond": (1.0, float("nan"))})
    with pytest.raises(CalibrationError, match="malformed"):
        MagCacheEntry.from_dict({"num_inference_steps": 2})
