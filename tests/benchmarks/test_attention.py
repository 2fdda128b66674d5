"""The attention microbenchmark's table (the measurement itself needs a GPU)."""

from __future__ import annotations

from benchmarks.attention import AttentionRow, table


def test_table_reports_tflops_speedup_and_error() -> None:
    row = AttentionRow(40, 32760, 128, 37.7, 25.0, 20.0, 0.002, 0.03, 0.9995)
    text = table([row])
    # 4 · 40 · 32760² · 128 / 37.7 ms = 583 TFLOPS.
    assert "| 40 × 32760 × 128 | 37.70 (583) |" in text
    assert "| 1.51 |" in text and "0.9995" in text
