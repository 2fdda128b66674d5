"""``python -m benchmarks.ready_time`` end to end on the CPU: three fresh worker starts of the
shipped model (eager, cold cache, warm cache), what each reported, and the report.

``aot_eager`` (dynamo's capture, eager kernels) keeps the compiled runs in seconds; it
generates no code, so the cache directories stay empty and what is checked is that both
compiled runs were given the same one. Timings are the benchmark's output, never asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.ready_report import PHASE_COLUMNS, SECTION_TITLE
from benchmarks.ready_time import SHIPPED_MODEL, ReadySettings, main, measure_model


@pytest.mark.slow
def test_three_fresh_starts_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's warm-up request, as small as the model takes (one frame, no guidance).
    monkeypatch.setenv("QVGEN_DEFAULT_SIZE", "16x16")
    monkeypatch.setenv("QVGEN_DEFAULT_NUM_FRAMES", "1")
    monkeypatch.setenv("QVGEN_DEFAULT_GUIDANCE_SCALE", "1.0")
    # The packed layers on the reference backend: interpreted Triton kernels would only slow
    # the children down (tests/service/engine/conftest.py says the same for the engine's tests).
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cache_root, benchmarks, raw = (
        tmp_path / "caches",
        tmp_path / "BENCHMARKS.md",
        tmp_path / "r.json",
    )
    code = main(
        [
            "--device", "cpu", "--backend", "aot_eager", "--cache-root", str(cache_root),
            "--benchmarks", str(benchmarks), "--json", str(raw), "--commit", "abc1234",
        ]
    )  # fmt: skip
    assert code == 0

    figures = json.loads(raw.read_text())
    assert figures["settings"]["warm_up"]["width"] == 16
    assert figures["settings"]["warm_up"]["num_inference_steps"] == 2
    runs = figures["runs"]
    assert [(r["model"], r["kind"]) for r in runs] == [
        (SHIPPED_MODEL.name, "eager"),
        (SHIPPED_MODEL.name, "cold"),
        (SHIPPED_MODEL.name, "warm"),
    ]
    eager, cold, warm = (r["phases"] for r in runs)
    assert eager["compile_status"] == "eager"
    assert cold["compile_status"] == warm["compile_status"] == "compiled"
    # Both compiled runs were pointed at one directory, which the cold one found empty.
    cache = cache_root / SHIPPED_MODEL.name / "compile-cache"
    assert runs[1]["cache_dir"] == runs[2]["cache_dir"] == str(cache)
    assert cold["inductor_cache_dir"] == warm["inductor_cache_dir"] == str(cache / "inductor")
    assert cold["triton_cache_dir"] == warm["triton_cache_dir"] == str(cache / "triton")
    assert (cache / "inductor").is_dir() and (cache / "triton").is_dir()
    # The eager run's caches are not the compiled runs' (its inductor one is torch's default).
    assert eager["inductor_cache_dir"] != cold["inductor_cache_dir"]
    assert eager["triton_cache_dir"] == str(cache_root / SHIPPED_MODEL.name / "eager" / "triton")
    for phases in (eager, cold, warm):
        assert all(phases[name] > 0 for name, _ in PHASE_COLUMNS), phases
        total = sum(phases[name] for name in ("start_s", "imports_s", "load_s", "warm_up_s"))
        assert phases["ready_s"] == pytest.approx(total)

    section = benchmarks.read_text()
    assert section.startswith("# Benchmarks")
    assert f"## {SECTION_TITLE}" in section and "commit abc1234" in section
    assert all(title in section for _, title in PHASE_COLUMNS)
    assert "1×16×16, 2 steps, guidance 1.0" in section and "`aot_eager` backend" in section
    rows = [line for line in section.splitlines() if line.startswith(f"| {SHIPPED_MODEL.name} |")]
    assert [row.split(" | ")[1] for row in rows[:3]] == ["eager", "cold", "warm"]
    assert [row.split(" | ")[2] for row in rows[:3]] == ["eager", "compiled", "compiled"]
    # The ratios row: every ratio present, none left as "–".
    assert len(rows) == 4 and "–" not in rows[3]


def test_a_cold_run_refuses_a_cache_that_is_not_empty(tmp_path: Path) -> None:
    cache = tmp_path / SHIPPED_MODEL.name / "compile-cache"
    (cache / "inductor").mkdir(parents=True)
    with pytest.raises(ValueError, match="compile-cache is not empty"):
        measure_model(SHIPPED_MODEL, ReadySettings(device="cpu"), tmp_path)
