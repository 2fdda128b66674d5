"""The recipe split over commands: --vae-only, --vae-from, --piece-seconds, --resume-transformer.

The reference is one unsplit run; the split one trains the VAE alone, then the transformer in
three pieces (paused by a fake clock after two steps each, resumed from the previous piece's
directory). On the CPU every number must come out the same, so the comparisons are exact.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from qvgen.cli import main
from qvgen.tiny_pipelines import build_tiny_wan
from recipes.tiny_model import flow_stage, recipe
from recipes.tiny_model.config import RecipeConfig, RunScope, SpecName
from recipes.tiny_model.encoders import ENCODERS_DIR
from recipes.tiny_model.flow_state import STATE_DIR, STATE_FILE, WEIGHTS_FILE
from recipes.tiny_model.progress import LOG_FILE
from recipes.tiny_model.recipe import PIPELINE_DIR, train_base

CPU = torch.device("cpu")
CONFIG = RecipeConfig(
    spec=SpecName.TOY,
    clips=6,
    frames=9,
    vae_steps=2,
    vae_batch=1,
    vae_frames=5,
    flow_steps=6,
    flow_batch=2,
    warmup_steps=2,
)
PIECE_SECONDS = 2.0  # the fake clock ticks 1 s per step: two steps a piece


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """root/unsplit, and root/vae + root/piece-1 … piece-3: the same recipe, split."""
    root = tmp_path_factory.mktemp("pieces")
    with pytest.MonkeyPatch.context() as patch:
        clock = map(float, itertools.count())
        fake = types.SimpleNamespace(monotonic=clock.__next__, perf_counter=time.perf_counter)
        patch.setattr(flow_stage, "time", fake)
        train_base(CONFIG, root / "unsplit", CPU)
        train_base(CONFIG, root / "vae", CPU, RunScope(vae_only=True))

        def no_vae_training(*args: Any) -> None:
            raise AssertionError("--vae-from must not train the VAE")

        patch.setattr(recipe, "train_vae", no_vae_training)
        scope = RunScope(vae_from=root / "vae", piece_seconds=PIECE_SECONDS)
        assert train_base(CONFIG, root / "piece-1", CPU, scope) is None
        scope = RunScope(resume_transformer=root / "piece-1", piece_seconds=PIECE_SECONDS)
        assert train_base(CONFIG, root / "piece-2", CPU, scope) is None
        scope = RunScope(resume_transformer=root / "piece-2")
        assert train_base(CONFIG, root / "piece-3", CPU, scope) == root / "piece-3" / PIPELINE_DIR
    yield root


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]


def _steps(run: Path) -> list[tuple[int, float, float, float]]:
    return [
        (r["step"], r["loss"], r["grad_norm"], r["lr"])
        for r in _records(run)
        if r["stage"] == "transformer" and "step" in r
    ]


def test_pieces_reproduce_the_unsplit_run_exactly(runs: Path) -> None:
    pieces = [runs / f"piece-{i}" for i in (1, 2, 3)]
    assert [[s[0] for s in _steps(p)] for p in pieces] == [[0, 1], [2, 3], [4, 5]]
    assert [s for p in pieces for s in _steps(p)] == _steps(runs / "unsplit")
    unsplit = load_file(runs / "unsplit" / STATE_DIR / WEIGHTS_FILE)
    split = load_file(runs / "piece-3" / STATE_DIR / WEIGHTS_FILE)
    assert unsplit.keys() == split.keys() and any(k.startswith("ema.") for k in split)
    different = [k for k in unsplit if not torch.equal(unsplit[k], split[k])]
    assert not different, different[:5]
    shipped = "transformer/diffusion_pytorch_model.safetensors"
    a, b = (load_file(runs / r / PIPELINE_DIR / shipped) for r in ("unsplit", "piece-3"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the pause is logged and the plan is the whole run's, not a piece's
    paused = [r for r in _records(pieces[0]) if "paused_at" in r]
    assert paused == [{"stage": "transformer", "paused_at": 2, "of": CONFIG.flow_steps}]
    state = json.loads((pieces[1] / STATE_DIR / STATE_FILE).read_text())
    assert (state["step"], state["total"]) == (4, CONFIG.flow_steps)


def test_only_the_last_piece_writes_a_pipeline(runs: Path) -> None:
    assert not (runs / "piece-1" / PIPELINE_DIR).exists()
    assert not (runs / "piece-2" / PIPELINE_DIR).exists()
    assert not (runs / "vae" / STATE_DIR).exists() and not (runs / "vae" / PIPELINE_DIR).exists()


def test_vae_from_skips_the_vae_stage_and_keeps_its_latent_statistics(runs: Path) -> None:
    # The fixture replaced train_vae by a function that fails: no piece called it.
    logged = [r["stage"] for r in _records(runs / "piece-1") if "step" in r]
    assert set(logged) == {"transformer"}
    loaded = [r for r in _records(runs / "piece-1") if r["stage"] == "vae"]
    assert loaded == [{"stage": "vae", "loaded_from": str(runs / "vae" / ENCODERS_DIR)}]
    source = AutoencoderKLWan.from_pretrained(runs / "vae" / ENCODERS_DIR / "vae")
    for run in ("piece-1", "piece-3"):
        for directory in (ENCODERS_DIR, PIPELINE_DIR):
            if not (runs / run / directory).exists():
                continue
            vae = AutoencoderKLWan.from_pretrained(runs / run / directory / "vae")
            assert vae.config.latents_mean == source.config.latents_mean
            assert vae.config.latents_std == source.config.latents_std
            theirs = vae.state_dict()
            assert all(torch.equal(v, theirs[k]) for k, v in source.state_dict().items())
    assert source.config.latents_std != [1.0] * source.config.z_dim  # measured, not the init


def test_vae_from_takes_a_pipeline_directory(runs: Path, tmp_path: Path) -> None:
    config = replace(CONFIG, flow_steps=1, warmup_steps=0)
    out = train_base(config, tmp_path, CPU, RunScope(vae_from=runs / "unsplit" / PIPELINE_DIR))
    assert out is not None
    vae = AutoencoderKLWan.from_pretrained(out / "vae")
    source = AutoencoderKLWan.from_pretrained(runs / "unsplit" / PIPELINE_DIR / "vae")
    assert vae.config.latents_mean == source.config.latents_mean


@pytest.mark.parametrize(
    ("scope", "config", "message"),
    [
        (RunScope(vae_from=Path("/no/such/run")), CONFIG, "--vae-from /no/such/run: no such"),
        (RunScope(resume_transformer=Path("/no/run")), CONFIG, "--resume-transformer /no/run: no"),
        (RunScope(piece_seconds=60.0), replace(CONFIG, flow_seconds=100.0), "--flow-seconds 100"),
    ],
)
def test_bad_starting_points_name_the_flag(
    scope: RunScope, config: RecipeConfig, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        train_base(config, tmp_path / "out", CPU, scope)
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"vae_only": True, "vae_from": Path("x")}, "--vae-only .* no --vae-from"),
        ({"vae_from": Path("x"), "resume_transformer": Path("y")}, "drop --vae-from"),
        ({"piece_seconds": 0.0}, r"--piece-seconds must lie in \[1.0"),
    ],
)
def test_run_scope_refuses_flags_that_clash(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunScope(**values)


def test_vae_from_refuses_a_directory_without_encoders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--vae-from .*: expected a pipeline directory"):
        train_base(CONFIG, tmp_path / "out", CPU, RunScope(vae_from=tmp_path))


def test_vae_from_refuses_encoders_of_another_spec(tmp_path: Path) -> None:
    other = build_tiny_wan(tmp_path / "other")  # the default test sizes, not the toy spec
    with pytest.raises(ValueError, match=r"--vae-from .* do not fit --spec toy: vae.base_dim 8"):
        train_base(CONFIG, tmp_path / "out", CPU, RunScope(vae_from=other))


def test_vae_from_refuses_statistics_of_other_clips(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--vae-from .* other clips .*--clips 6.*--clips 7"):
        train_base(replace(CONFIG, clips=7), tmp_path, CPU, RunScope(vae_from=runs / "vae"))


def test_resume_refuses_a_run_without_a_state(runs: Path, tmp_path: Path) -> None:
    scope = RunScope(resume_transformer=runs / "vae")
    with pytest.raises(
        ValueError, match=r"--resume-transformer .* no transformer_state/state.json"
    ):
        train_base(CONFIG, tmp_path, CPU, scope)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flow_lr": 1e-3}, "its run had --flow-lr 0.0008; this run has --flow-lr 0.001"),
        ({"flow_steps": 12}, "its run had --flow-steps 6; this run has --flow-steps 12"),
        ({"seed": 1}, "--seed 0; this run has --seed 1"),
    ],
)
def test_resume_refuses_another_recipe(
    runs: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    scope = RunScope(resume_transformer=runs / "piece-1")
    with pytest.raises(ValueError, match=f"--resume-transformer .*{message}"):
        train_base(replace(CONFIG, **change), tmp_path, CPU, scope)


def _tampered(runs: Path, tmp_path: Path, run: str, edit: dict[str, Any]) -> Path:
    copy = tmp_path / run
    shutil.copytree(runs / run, copy)
    path = copy / STATE_DIR / STATE_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    return copy


@pytest.mark.parametrize(
    ("run", "edit", "message"),
    [
        ("piece-3", {}, "step 6 of a 6-step plan .*nothing is left to train"),
        ("piece-1", {"device_type": "cuda"}, "trained on cuda, this run is on cpu"),
        ("piece-1", {"format": 99}, "state format 99"),
        ("piece-1", {"encoders": "0" * 64}, "trained on other encoders"),
    ],
)
def test_resume_refuses_a_state_it_cannot_continue(
    runs: Path, tmp_path: Path, run: str, edit: dict[str, Any], message: str
) -> None:
    scope = RunScope(resume_transformer=_tampered(runs, tmp_path, run, edit))
    with pytest.raises(ValueError, match=f"--resume-transformer .*{message}"):
        train_base(CONFIG, tmp_path / "out", CPU, scope)


def test_the_command_line_reports_a_clash_and_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["tiny", "train-base", "--out", str(tmp_path / "out"), "--spec", "toy", "--device"]
    argv += ["cpu", "--vae-only", "--piece-seconds", "60"]
    assert main(argv) == 2
    assert "--vae-only trains the VAE stage alone" in caplog.text
