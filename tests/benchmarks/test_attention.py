"""The attention microbenchmark's tables (the measurement itself needs a GPU)."""

from __future__ import annotations

from benchmarks.attention import SWEEP, AttentionRow, sweep_table, table


def test_tables_report_tflops_speedup_error_and_the_fastest_tiles() -> None:
    kernel_ms = {tiles: 30.0 + index for index, tiles in enumerate(SWEEP)}
    slow = SWEEP[1]
    kernel_ms[slow] = float("inf")  # a tile that failed to build
    kernel_ms[SWEEP[-1]] = 20.0
    row = AttentionRow(40, 32760, 128, 37.7, kernel_ms, 30.0, 25.0, 0.002, 0.03, 0.9995)
    assert row.best == SWEEP[-1]
    text = table([row])
    # 4 · 40 · 32760² · 128 / 37.7 ms = 583 TFLOPS; the compiled path is the one compared.
    assert "| 40 × 32760 × 128 | 37.70 (583) |" in text
    assert f"| {SWEEP[-1].label()} | 20.00 (1099) |" in text
    assert "| 1.51 |" in text and "0.9995" in text
    sweep = sweep_table([row])
    assert f"| {slow.label()} | failed |" in sweep
    assert f"| {SWEEP[-1].label()} | 20.00 (1099) |" in sweep


def test_a_failed_compile_falls_back_to_the_eager_figure() -> None:
    row = AttentionRow(12, 1024, 64, 2.0, {SWEEP[0]: 1.0}, 1.6, None, 0.002, 0.03, 0.999)
    text = table([row])
    assert "| failed |" in text and "| 1.25 |" in text
