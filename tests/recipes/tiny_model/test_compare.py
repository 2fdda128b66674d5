"""The comparison at toy scale: generation through the engine loader, scores, fidelity, figures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.settings import EvalSettings
from qvgen.tiny_pipelines import TinyPipelineSpec, TransformerSize, build_tiny_wan
from recipes.tiny_model.compare import (
    EVAL_SEED_BASE,
    FRAMES_FILE,
    RESULTS_FILE,
    compare,
    evaluation_set,
)
from recipes.tiny_model.figures import GRAD_NORMS_PNG, SIDE_BY_SIDE_PNG, TABLE_MD, write_figures
from recipes.tiny_model.spec import toy_spec
from service.engine.types import AttentionKernel
from training.synthetic.scorer import SCORE_NAMES

SETTINGS = EvalSettings(width=32, height=32, num_frames=5, num_inference_steps=2)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    fp = build_tiny_wan(root / "fp", seed=0, spec=toy_spec())
    other = build_tiny_wan(root / "other", seed=1, spec=toy_spec())
    out = root / "out"
    compare({"fp": fp, "same": fp, "other": other}, "fp", out, SETTINGS, "cpu", 1, count=2, batch=2)
    return out


def test_evaluation_set_covers_every_prompt_once_with_its_own_seed() -> None:
    pairs = evaluation_set(270)
    assert len({p for p, _ in pairs}) == 270
    assert [s for _, s in pairs] == list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + 270))
    with pytest.raises(ValueError, match="--count"):
        evaluation_set(271)


def test_comparison_scores_every_model_against_the_reference(comparison: Path) -> None:
    results = json.loads((comparison / RESULTS_FILE).read_text())
    models = results["models"]
    assert set(models) == {"fp", "same", "other"}
    for entry in models.values():
        assert set(entry["scores"]) == set(SCORE_NAMES)
        assert all(0.0 <= v <= 1.0 for v in entry["scores"].values())
    # The same directory generates the same clips: fidelity at its caps, identical scores.
    assert models["same"]["psnr"] > 140.0 and models["same"]["ssim"] == pytest.approx(1.0)
    assert models["same"]["scores"] == models["fp"]["scores"]
    assert models["other"]["psnr"] < 60.0
    assert {entry["attention"] for entry in models.values()} == {"sdpa"}
    # Per-pair values travel with the means, and the standard errors are theirs.
    other = models["other"]
    assert len(other["per_pair"]["prompt_accuracy"]) == 2
    assert other["ssim"] == pytest.approx(np.mean(other["per_pair"]["ssim"]), abs=1e-6)
    assert other["stderr"]["psnr"] == pytest.approx(
        np.std(other["per_pair"]["psnr"], ddof=1) / np.sqrt(2), abs=1e-3
    )
    frames = np.load(comparison / FRAMES_FILE)
    assert frames["fp"].shape[1:] == (SETTINGS.num_frames, SETTINGS.height, SETTINGS.width, 3)


def test_unknown_reference_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reference"):
        compare({"a": tmp_path}, "fp", tmp_path, SETTINGS, "cpu", workers=1)


def test_int8_attention_names_a_model_it_compares(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--int8-attention names no model: \['b'\]"):
        compare({"fp": tmp_path}, "fp", tmp_path, SETTINGS, "cpu", 1,
                attention={"b": AttentionKernel.INT8})  # fmt: skip


def test_int8_attention_is_refused_where_the_kernel_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never SDPA scored under the kernel's name: the CPU has no Triton device without the
    interpreter, and with it the pipeline's fp32 is a dtype the kernel does not take."""
    fp = build_tiny_wan(tmp_path / "fp", seed=0, spec=toy_spec())
    attention = {"fp": AttentionKernel.INT8}
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"--int8-attention .*cannot run: .*not a CUDA GPU"):
        compare({"fp": fp}, "fp", tmp_path / "a", SETTINGS, "cpu", 1, count=2, attention=attention)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="head dim 12"):
        compare({"fp": fp}, "fp", tmp_path / "b", SETTINGS, "cpu", 1, count=2, attention=attention)
    wide = build_tiny_wan(tmp_path / "wide", seed=0, spec=_head_dim_32())
    with pytest.raises(ValueError, match=r"--int8-attention w: .*runs in torch\.float32 on cpu"):
        compare({"w": wide}, "w", tmp_path / "c", SETTINGS, "cpu", 1, count=2,
                attention={"w": AttentionKernel.INT8})  # fmt: skip


def _head_dim_32() -> TinyPipelineSpec:
    return replace(
        toy_spec(), transformer=TransformerSize(num_layers=1, num_heads=2, head_dim=32, ffn_dim=32)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the 8-bit kernel needs a CUDA GPU")
def test_int8_attention_model_runs_on_the_kernel(tmp_path: Path) -> None:
    wide = build_tiny_wan(tmp_path / "wide", seed=0, spec=_head_dim_32())
    results = compare(
        {"fp": wide, "attn8": wide}, "fp", tmp_path / "out", SETTINGS, "cuda", 1, count=2,
        batch=2, attention={"attn8": AttentionKernel.INT8},
    )  # fmt: skip
    models = results["models"]
    assert models["fp"]["attention"] == "sdpa" and models["attn8"]["attention"] == "int8"
    # Close to SDPA's clips (the kernel's error, ~4 %, not a different model), not equal to them.
    assert 15.0 < models["attn8"]["psnr"] < 140.0


def test_figures_and_table(comparison: Path, tmp_path: Path) -> None:
    runs = {}
    for name, scale in (("lsq", 2.0), ("qvgen", 1.0)):
        run = tmp_path / name
        run.mkdir()
        lines = [json.dumps({"step": s, "grad_norm": scale / (1 + s)}) for s in range(50)]
        (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")
        runs[name] = run
    out = tmp_path / "figures"
    write_figures([comparison], runs, ["fp", "other"], out)
    assert Image.open(out / GRAD_NORMS_PNG).size[0] > 100
    picture = Image.open(out / SIDE_BY_SIDE_PNG)
    assert picture.size[0] == 2 * (3 * SETTINGS.width * 2 + 4)  # 2 models × 3 frames, ×2 scale
    rows = [line for line in (out / TABLE_MD).read_text().splitlines() if line.startswith("| ")]
    # Two tables (seed groups, single runs) of a header and the three models each.
    assert len(rows) == 2 * (1 + 3) and rows[1].startswith("| fp |")
    with pytest.raises(KeyError, match="missing-model"):
        write_figures([comparison], {}, ["fp", "missing-model"], out)
