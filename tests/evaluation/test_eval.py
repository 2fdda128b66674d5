"""qvgen eval end to end: a tiny Wan pipeline against its RTN W4A4 export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.compare import load_scorer
from qvgen.cli import main

PROMPTS = (
    "a red circle moving left on a black background",
    "a blue square staying still on a white background",
)


def test_eval_reports_psnr_ssim_and_task_scores(
    tiny_wan_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "rtn"
    assert main(["train", "--model", str(tiny_wan_dir), "--out", str(run), "--method", "rtn"]) == 0
    exported = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run), "--out", str(exported)]) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    report_path = tmp_path / "eval.json"
    code = main([
        "eval", "--reference", str(tiny_wan_dir), "--quantized", str(exported),
        "--prompts", str(prompts), "--seeds", "0", "--width", "16", "--height", "16",
        "--frames", "9", "--steps", "2", "--scorer", "synthetic", "--json", str(report_path),
    ])  # fmt: skip
    assert code == 0
    report = json.loads(report_path.read_text())
    assert [(v["prompt"], v["seed"]) for v in report["videos"]] == [(p, 0) for p in PROMPTS]
    for video in report["videos"]:
        # W4A4 round-to-nearest changes the video, but not into noise.
        assert 0.0 < video["ssim"] < 1.0 and 5.0 < video["psnr_db"] < 100.0
    assert set(report["scores"]) == {"full_precision", "quantized"}
    assert "prompt_accuracy" in report["scores"]["quantized"]
    assert "| **mean** |" in capsys.readouterr().out


def test_scorer_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="'module:function'"):
        load_scorer("nonsense")
    with pytest.raises(ValueError, match="is not a function"):
        load_scorer("evaluation.metrics:MIN_MSE")
