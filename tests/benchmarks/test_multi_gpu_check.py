"""The multi-GPU check's verdict (``--compare-only`` on logs written here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.multi_gpu_check import main

STEPS = 8


def _write(root: Path, name: str, losses: list[float], ranks: list[int] | None = None) -> None:
    (root / name).mkdir(parents=True)
    ranks = ranks or [4] * len(losses)
    lines = [
        json.dumps({"step": i, "loss": loss, "grad_norm": 1.0 + loss, "phi_rank": rank})
        for i, (loss, rank) in enumerate(zip(losses, ranks, strict=True))
    ]
    (root / name / "train_log.jsonl").write_text("\n".join(lines) + "\n")


def _runs(root: Path, ddp: list[float], fsdp_ranks: list[int] | None = None) -> int:
    single = [0.1 - 0.005 * i for i in range(STEPS)]
    _write(root, "single", single)
    _write(root, "single-eager", [v * (1.004 if i else 1.0) for i, v in enumerate(single)])
    _write(root, "ddp", ddp)
    _write(root, "fsdp", single, fsdp_ranks)
    return main(["--work", str(root), "--compare-only"])


def test_runs_that_drift_like_a_rounding_change_pass(tmp_path: Path) -> None:
    single = [0.1 - 0.005 * i for i in range(STEPS)]
    drifted = [v * (1.0 + 0.03 * (-1) ** i) if i else v for i, v in enumerate(single)]
    assert _runs(tmp_path, drifted) == 0  # per-step 3 % apart, last-quarter mean within 2 %
    verdict = json.loads((tmp_path / "multi_gpu_check.json").read_text())
    assert verdict["passed"] and verdict["ddp"]["max_rel_loss"] > 0.02


def test_a_run_whose_losses_settle_elsewhere_fails(tmp_path: Path) -> None:
    single = [0.1 - 0.005 * i for i in range(STEPS)]
    assert _runs(tmp_path, [v * (1.0 if i < 4 else 1.1) for i, v in enumerate(single)]) == 1


def test_a_different_phi_rank_schedule_fails(tmp_path: Path) -> None:
    single = [0.1 - 0.005 * i for i in range(STEPS)]
    assert _runs(tmp_path, single, fsdp_ranks=[4, 4, 2, 2, 1, 1, 0, 0]) == 1
