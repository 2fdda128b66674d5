"""Error bars of the comparison against hand-computed values; seed groups; the median run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recipes.tiny_model.compare import model_entry
from recipes.tiny_model.error_bars import (
    PairedDifference,
    Spread,
    binomial_stderr,
    group_by_seed,
    mean_over_seeds,
    mean_stderr,
    median_run,
    seed_group,
)
from recipes.tiny_model.figures import (
    comparison_table,
    merge_comparisons,
    paired_differences,
    paired_table,
    run_stderr,
    seed_curves,
    seeds_table,
)
from training.synthetic.scorer import SCORE_NAMES


def test_binomial_stderr_by_hand() -> None:
    # 0.5 · 0.5 / 200 = 0.00125, √ = 0.035355…: the ±0.035 of the shipped comparison.
    assert binomial_stderr(0.5, 200) == pytest.approx(0.0353553, abs=1e-7)
    # 0.375 · 0.625 / 8 = 0.029296875, √ = 0.171163…
    assert binomial_stderr(0.375, 8) == pytest.approx(0.1711633, abs=1e-7)
    assert binomial_stderr(1.0, 5) == 0.0
    with pytest.raises(ValueError, match="n ≥ 1"):
        binomial_stderr(0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binomial_stderr(1.2, 10)


def test_mean_stderr_by_hand() -> None:
    # values 1, 2, 3, 4: mean 2.5, sample variance 5/3, s/√4 = √(5/3)/2 = 0.645497…
    assert mean_stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.6454972, abs=1e-7)
    with pytest.raises(ValueError, match="≥ 2"):
        mean_stderr([1.0])


def test_spread_over_seeds_by_hand() -> None:
    # 0.45, 0.47, 0.52: mean 0.48, deviations −0.03, −0.01, 0.04, Σ² = 0.0026, /2 → SD 0.036056
    s = Spread.of([0.45, 0.47, 0.52])
    assert (s.mean, s.runs) == (pytest.approx(0.48), 3)
    assert s.std == pytest.approx(0.0360555, abs=1e-7)
    assert Spread.of([0.3]).std is None


def test_seed_groups() -> None:
    assert seed_group("qvgen-w4a4-seed12") == ("qvgen-w4a4", 12)
    assert seed_group("rtn-w4a4") == ("rtn-w4a4", None)
    names = ["fp", "qvgen-w4a4-seed2", "rtn-w4a4", "qvgen-w4a4-seed0", "qvgen-w4a4-seed1"]
    assert group_by_seed(names) == {
        "fp": ["fp"],
        "qvgen-w4a4": ["qvgen-w4a4-seed0", "qvgen-w4a4-seed1", "qvgen-w4a4-seed2"],
        "rtn-w4a4": ["rtn-w4a4"],
    }


def test_median_run_is_the_middle_seed() -> None:
    assert median_run({"a-seed0": 0.50, "a-seed1": 0.40, "a-seed2": 0.45}) == "a-seed2"
    # A tie goes by name: seed0 and seed1 both 0.4, seed0 sorts first, the middle is seed1.
    assert median_run({"a-seed0": 0.4, "a-seed1": 0.4, "a-seed2": 0.6}) == "a-seed1"


def test_model_entry_by_hand() -> None:
    scores = np.zeros((4, len(SCORE_NAMES)))
    accuracy = SCORE_NAMES.index("prompt_accuracy")
    scores[:, accuracy] = [1, 0, 1, 1]
    entry = model_entry(scores, np.array([20.0, 22.0, 24.0, 26.0]), np.full(4, 0.9), 1.5)
    assert entry["scores"]["prompt_accuracy"] == 0.75
    # √(0.75 · 0.25 / 4) = 0.216506…; PSNR s = √(20/3) = 2.581989, /√4 = 1.290994
    assert entry["stderr"]["prompt_accuracy"] == pytest.approx(0.2165064, abs=1e-7)
    assert entry["stderr"]["psnr"] == pytest.approx(1.2909944, abs=1e-7)
    assert entry["stderr"]["ssim"] == 0.0
    assert entry["per_pair"]["prompt_accuracy"] == [1.0, 0.0, 1.0, 1.0]


def _entry(accuracy: float, psnr: float) -> dict[str, Any]:
    scores = {key: 1.0 for key in SCORE_NAMES} | {"prompt_accuracy": accuracy}
    return {"scores": scores, "psnr": psnr, "ssim": 0.9}


def _results(models: dict[str, dict[str, Any]], count: int = 200) -> dict[str, Any]:
    return {"settings": {"count": count}, "models": models}


def test_tables_group_seeds_with_their_spread() -> None:
    results = _results(
        {
            "fp": _entry(0.5, 0.0),
            "qvgen-w4a4-seed0": _entry(0.45, 23.0),
            "qvgen-w4a4-seed1": _entry(0.47, 23.2),
            "qvgen-w4a4-seed2": _entry(0.52, 23.4),
            "rtn-w4a4": _entry(0.47, 22.5),
        }
    )
    rows = seeds_table(results).splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| fp", "| qvgen-w4a4", "| rtn-w4a4"]
    qvgen = rows[1].split(" | ")
    # mean 0.48 ± SD 0.036 (the spread test's numbers), 0.48 / 0.5 = 0.96× FP; PSNR 23.2 ± 0.2
    assert qvgen[1 + SCORE_NAMES.index("prompt_accuracy")] == "0.480 ± 0.036 (0.96×)"
    assert qvgen[1 + len(SCORE_NAMES)] == "23.20 ± 0.20"
    assert rows[1].endswith("| 3 |") and rows[2].endswith("| 1 |")
    assert "0.470 (0.94×)" in rows[2]  # a single run: no ±
    # The single-run table: 0.47 over 200 pairs ± √(0.47 · 0.53 / 200) = 0.0353…
    table = comparison_table(results)
    assert "| rtn-w4a4 | 1.000 ± 0.000" in table and "0.470 ± 0.035" in table


def test_run_stderr_of_a_comparison_without_per_pair_values() -> None:
    # The shipped comparison stored means alone: scorer errors follow, PSNR/SSIM's do not.
    stderr = run_stderr(_entry(0.45, 23.2), 200)
    assert stderr["prompt_accuracy"] == pytest.approx(math.sqrt(0.45 * 0.55 / 200))
    assert stderr["psnr"] is None and stderr["ssim"] is None


def test_merge_keeps_the_first_reference_and_refuses_other_settings() -> None:
    w4 = _results({"fp": _entry(0.5, 0.0), "rtn-w4a4": _entry(0.47, 22.5)})
    w3 = _results({"fp": _entry(0.4, 0.0), "rtn-w3a3": _entry(0.36, 17.9)})
    merged = merge_comparisons([w4, w3])
    assert list(merged["models"]) == ["fp", "rtn-w4a4", "rtn-w3a3"]
    assert merged["models"]["fp"]["scores"]["prompt_accuracy"] == 0.5
    with pytest.raises(ValueError, match="different settings"):
        merge_comparisons([w4, _results({}, count=100)])


def test_seed_curves_average_the_steps_all_runs_logged(tmp_path: Path) -> None:
    runs = []
    for k, (norms, last) in enumerate(((1.0, 4), (3.0, 3))):
        run = tmp_path / f"lsq-w4a4-seed{k}"
        run.mkdir()
        lines = [json.dumps({"step": s, "grad_norm": norms * (s + 1)}) for s in range(last)]
        (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")
        runs.append(run)
    steps, mean, low, high = seed_curves(runs)
    # Steps 0–2 in both (the second run stopped at 3): (1·(s+1) + 3·(s+1)) / 2 = 2(s+1)
    assert steps.tolist() == [0, 1, 2]
    assert mean.tolist() == [2.0, 4.0, 6.0]
    assert low.tolist() == [1.0, 2.0, 3.0] and high.tolist() == [3.0, 6.0, 9.0]


def test_median_command_names_the_run_to_ship(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qvgen.cli import main
    from recipes.tiny_model.compare import RESULTS_FILE

    models = {"fp": _entry(0.5, 0.0), "rtn-w4a4": _entry(0.9, 22.0)}
    models |= {f"qvgen-w4a4-seed{k}": _entry(a, 23.0) for k, a in enumerate((0.52, 0.45, 0.47))}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(_results(models)))
    args = ["tiny", "median", "--comparison", str(tmp_path)]
    assert main([*args, "--group", "qvgen-w4a4"]) == 0
    assert capsys.readouterr().out.strip() == "qvgen-w4a4-seed2"  # 0.45 < 0.47 < 0.52
    assert main([*args, "--group", "lsq-w4a4"]) == 2
    assert main([*args, "--group", "qvgen-w4a4", "--by", "sharpness"]) == 2


def test_paired_difference_by_hand() -> None:
    # d = a − b = [1, 0, 1, 0]: mean 0.5, s_d = √(1/3) = 0.57735, /√4 = 0.288675
    diff = PairedDifference.of([1, 1, 1, 0], [0, 1, 0, 0])
    assert diff.mean == 0.5 and diff.pairs == 4
    assert diff.stderr == pytest.approx(0.2886751, abs=1e-7)
    assert diff.in_stderrs == pytest.approx(0.5 / 0.2886751, rel=1e-6)
    # The same pairs failing together: unpaired SEs would be √(2 · 0.25/4) = 0.354; paired 0.
    same = PairedDifference.of([1, 0, 1, 0], [1, 0, 1, 0])
    assert same.stderr == 0.0 and same.in_stderrs == 0.0
    assert PairedDifference.of([1, 1], [0, 0]).in_stderrs == math.inf
    with pytest.raises(ValueError, match="same pairs"):
        PairedDifference.of([1, 0], [1])


def test_mean_over_seeds_is_per_pair() -> None:
    assert mean_over_seeds([[1, 0, 1], [0, 0, 1], [1, 0, 0]]) == pytest.approx([2 / 3, 0, 2 / 3])
    with pytest.raises(ValueError, match="same"):
        mean_over_seeds([[1, 0], [1]])


def _paired_entry(accuracy: list[float]) -> dict[str, Any]:
    per_pair = {key: [1.0] * len(accuracy) for key in (*SCORE_NAMES, "psnr", "ssim")}
    per_pair["prompt_accuracy"] = accuracy
    entry = _entry(float(np.mean(accuracy)), 20.0)
    return entry | {"per_pair": per_pair}


def test_paired_table_contrasts_qvgen_with_each_method_of_its_width() -> None:
    results = _results(
        {
            "fp": _paired_entry([1, 1, 1, 1]),
            "qvgen-w4a4-seed0": _paired_entry([1, 1, 1, 0]),
            "qvgen-w4a4-seed1": _paired_entry([1, 1, 0, 0]),
            "lsq-w4a4-seed0": _paired_entry([1, 0, 0, 0]),
            "lsq-w4a4-seed1": _paired_entry([1, 0, 0, 0]),
            "rtn-w3a3": _paired_entry([0, 0, 0, 0]),
            "qvgen-w3a3-seed0": _paired_entry([1, 0, 0, 0]),
        },
        count=4,
    )
    differences = paired_differences(results)
    assert list(differences) == [("qvgen-w4a4", "lsq-w4a4"), ("qvgen-w3a3", "rtn-w3a3")]
    # qvgen per pair (seed mean) [1, 1, .5, 0], lsq [1, 0, 0, 0]: d = [0, 1, .5, 0], mean 0.375
    w4 = differences[("qvgen-w4a4", "lsq-w4a4")]["prompt_accuracy"]
    assert w4.mean == pytest.approx(0.375)
    assert w4.stderr == pytest.approx(float(np.std([0, 1, 0.5, 0], ddof=1)) / 2)
    table = paired_table(results)
    assert "| qvgen-w4a4 − lsq-w4a4 |" in table and "+0.375 (+1.6 SE)" in table
    assert "Paired over the same 4 pairs" in comparison_table(results)


def test_no_paired_table_without_per_pair_values() -> None:
    results = _results(
        {
            "fp": _entry(0.5, 0.0),
            "qvgen-w4a4-seed0": _entry(0.4, 22.0),
            "lsq-w4a4-seed0": _entry(0.3, 22.0),
        }
    )
    assert paired_table(results) == ""
    assert "Paired" not in comparison_table(results)
